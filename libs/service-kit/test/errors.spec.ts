import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { AgentServiceClient, AgentServiceService, type AgentServiceServer } from '@tandem/protocol';
import { AuthError, bindServer, errorEdge, serveWithEdge, statusOf, StatusError, ValidationError, type EdgeHandlers } from '../src';

const ROOT = path.join(__dirname, '../../..');

describe('the error base and the edge of a service', () => {
  it('maps a StatusError to its code, message and trailers, and anything else to a generic INTERNAL', () => {
    const refused = statusOf(new StatusError(grpc.status.RESOURCE_EXHAUSTED, 'x must stay <= 1, given 2', { trailers: { 'retry-after-ms': '40' } }), 'svc');
    expect({ code: refused.code, details: refused.details, retry: refused.metadata.get('retry-after-ms') }).toEqual({
      code: grpc.status.RESOURCE_EXHAUSTED,
      details: 'x must stay <= 1, given 2',
      retry: ['40'],
    });
    expect(statusOf(new AuthError(grpc.status.PERMISSION_DENIED, 'no'), 'svc').code).toBe(grpc.status.PERMISSION_DENIED);
    const internal = statusOf(new Error('ENOENT /secret/path'), 'svc');
    expect({ code: internal.code, details: internal.details }).toEqual({ code: grpc.status.INTERNAL, details: 'internal error in the svc (logged)' });
    // a service's own map comes first; the message is capped at 1 KiB
    const mapped = statusOf(new RangeError('r'.repeat(5000)), 'svc', (e) =>
      e instanceof RangeError ? new StatusError(grpc.status.OUT_OF_RANGE, e.message, { cause: e }) : undefined,
    );
    expect(mapped.code).toBe(grpc.status.OUT_OF_RANGE);
    expect(Buffer.byteLength(mapped.details)).toBeLessThanOrEqual(1024);
    expect(new ValidationError('v', { cause: internal }).cause).toBe(internal);
  });

  describe('handlers served behind the edge', () => {
    let server: grpc.Server;
    let client: InstanceType<typeof AgentServiceClient>;
    const logged: Record<string, unknown>[] = [];
    const log = pino(
      { level: 'error' },
      new Writable({
        write(chunk, _enc, done) {
          logged.push(JSON.parse(String(chunk)));
          done();
        },
      }),
    );
    let throwing: unknown;

    beforeAll(async () => {
      server = new grpc.Server();
      const handlers: EdgeHandlers<AgentServiceServer> = {
        generate: async () => {
          await new Promise((r) => setTimeout(r, 5));
          throw throwing;
        },
        getStatus: () => {
          throw throwing;
        },
      };
      serveWithEdge(
        server,
        AgentServiceService,
        handlers,
        errorEdge(log, (err) => statusOf(err, 'test-service')),
      );
      const port = await bindServer(server, '127.0.0.1:0', grpc.ServerCredentials.createInsecure());
      client = new AgentServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    });
    afterAll(() => {
      client.close();
      server.forceShutdown();
    });

    const unary = (): Promise<grpc.ServiceError> => new Promise((resolve) => client.getStatus({}, (err) => resolve(err!)));
    const stream = (): Promise<grpc.ServiceError> =>
      new Promise((resolve) =>
        client
          .generate({ maxNewTokens: 1, placement: '', input: undefined })
          .on('error', resolve)
          .on('data', () => undefined),
      );

    it('answers a thrown or rejected StatusError with its status and trailers, unary and streaming', async () => {
      throwing = new StatusError(grpc.status.RESOURCE_EXHAUSTED, 'sessions must stay <= 1, given 2', { trailers: { 'retry-after-ms': '250' } });
      for (const err of [await unary(), await stream()]) {
        expect({ code: err.code, details: err.details, retry: err.metadata.get('retry-after-ms') }).toEqual({
          code: grpc.status.RESOURCE_EXHAUSTED,
          details: 'sessions must stay <= 1, given 2',
          retry: ['250'],
        });
      }
    });

    it('answers anything else INTERNAL with a generic message, and logs the error with its cause', async () => {
      logged.length = 0;
      throwing = new Error('reading /var/lib/secret failed', { cause: new Error('EACCES') });
      for (const err of [await unary(), await stream()]) {
        expect({ code: err.code, details: err.details }).toEqual({ code: grpc.status.INTERNAL, details: 'internal error in the test-service (logged)' });
      }
      expect(logged).toHaveLength(2);
      expect(JSON.stringify(logged[0])).toContain('reading /var/lib/secret failed');
      expect(JSON.stringify(logged[0])).toContain('EACCES');
    });
  });

  describe.each([
    ['server-executor', { EXECUTOR_MAX_SESSIONS: 'many' }, "EXECUTOR_MAX_SESSIONS must be an integer in 1..100000, given 'many'"],
    ['planner', { PLANNER_SLA_MARGIN: '2' }, "PLANNER_SLA_MARGIN must be a number in 0.1..1, given '2'"],
    ['client-agent', { AGENT_THREADS: '-1' }, "AGENT_THREADS must be an integer in 0..256, given '-1'"],
  ])('%s exits 2 on bad configuration, with one line naming the field, the rule and the value', (service, badEnv, problem) => {
    const start = (env: Record<string, string>) =>
      spawnSync(process.execPath, ['--require', 'tsx/cjs', path.join(ROOT, 'apps', service, 'src', 'main.ts')], {
        cwd: ROOT,
        encoding: 'utf8',
        timeout: 60_000,
        env: { PATH: process.env.PATH ?? '', NATS_URL: 'off', LOG_LEVEL: 'silent', ...env },
      });

    it('a MODEL_DIR that holds no model', () => {
      const dir = path.join(ROOT, 'no-such-model-dir');
      const r = start({ MODEL_DIR: dir });
      expect({ status: r.status, stderr: r.stderr }).toEqual({
        status: 2,
        stderr: `${service}: manifest.json must exist in the model directory, given '${dir}'\n`,
      });
    }, 60_000);

    it('a bad environment variable', () => {
      const r = start({ MODEL_DIR: path.join(ROOT, 'no-such-model-dir'), ...badEnv });
      expect(r.status).toBe(2);
      const [head, ...lines] = r.stderr.trimEnd().split('\n');
      expect(head).toBe(`${service}: invalid configuration:`);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain(problem);
    }, 60_000);
  });
});
