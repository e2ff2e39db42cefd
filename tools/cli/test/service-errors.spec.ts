import * as grpc from '@grpc/grpc-js';
import { AgentServiceService, type AgentServiceServer } from '@tandem/protocol';
import { bindServer } from '@tandem/service-kit';
import { freePort } from '@tandem/testkit';
import { ServiceCallError } from '../src/errors';
import { run } from './run-cli';

describe('a command whose service answers with an error status', () => {
  let server: grpc.Server;
  let addr: string;
  let answer: Partial<grpc.StatusObject>;

  beforeAll(async () => {
    server = new grpc.Server();
    const handlers: AgentServiceServer = {
      generate: (call) => {
        call.emit('error', answer);
      },
      getStatus: (_call, cb) => cb(answer),
    };
    server.addService(AgentServiceService, handlers);
    addr = `127.0.0.1:${await bindServer(server, '127.0.0.1:0', grpc.ServerCredentials.createInsecure())}`;
  });
  afterAll(() => server.forceShutdown());

  const generate = (): ReturnType<typeof run> => run(['generate', '--agent', addr, '--ids', '1,2', '--max-new-tokens', '2']);

  it("names the service, the call, the status code name and the service's message, on one line", async () => {
    answer = { code: grpc.status.PERMISSION_DENIED, details: "open.client_id must be the caller's own client id 'a', given 'b'" };
    const r = await generate();
    expect(r).toEqual({
      code: 1,
      stdout: '',
      stderr: `tandem generate: the agent at ${addr}: Generate failed with PERMISSION_DENIED: open.client_id must be the caller's own client id 'a', given 'b'\n`,
    });
  });

  it('exits 2 when the service refused the input (INVALID_ARGUMENT)', async () => {
    answer = { code: grpc.status.INVALID_ARGUMENT, details: "placement must be 6 letters C or S, given 'CS'" };
    const r = await generate();
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`tandem generate: the agent at ${addr}: Generate failed with INVALID_ARGUMENT: placement must be 6 letters C or S, given 'CS'\n`);
  });

  it('keeps the gRPC error as the cause (TANDEM_DEBUG prints it)', async () => {
    const grpcError = Object.assign(new Error('14 UNAVAILABLE: down'), { code: grpc.status.UNAVAILABLE, details: 'down', metadata: new grpc.Metadata() });
    const e = ServiceCallError.of('the planner at h:1', 'ListPlans', grpcError, () => ' (is it running?)') as ServiceCallError;
    expect({ message: e.message, cause: e.cause, exitCode: e.exitCode }).toEqual({
      message: 'the planner at h:1: ListPlans failed with UNAVAILABLE: down (is it running?)',
      cause: grpcError,
      exitCode: 1,
    });
    // an error that is no status (no code) is not the service's answer: it stays as it is
    const other = new Error('the agent ended the stream without a summary');
    expect(ServiceCallError.of('the agent at h:1', 'Generate', other)).toBe(other);
    answer = { code: grpc.status.INTERNAL, details: 'internal error in the client-agent (logged)' };
    process.env.TANDEM_DEBUG = '1';
    try {
      const r = await generate();
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('[cause]: Error: 13 INTERNAL: internal error in the client-agent (logged)');
    } finally {
      delete process.env.TANDEM_DEBUG;
    }
  });

  it('names the status code of a planner that cannot be reached', async () => {
    const port = await freePort();
    const r = await run(['plans', '--planner', `127.0.0.1:${port}`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      new RegExp(`^tandem plans: the planner at 127\\.0\\.0\\.1:${port}: ListPlans failed with UNAVAILABLE: .*\\(is it running\\?\\)\\n$`),
    );
  });
});
