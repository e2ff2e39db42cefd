import * as grpc from '@grpc/grpc-js';
import { addReflection, HEALTH_SERVICE_NAME, HealthReporter, protoServiceNames, ServingStatus } from '@tandem/protocol';
import { bindInsecure, shutdownServer } from '@tandem/service-kit';
import { ReflectionAnswerError, ReflectionClient, type ReflectionVersion } from '../src';

// Server reflection from the descriptor set generated with the code (libs/protocol), on a real
// gRPC server, asked by a client built from the reflection protocol's own proto.

const EXECUTOR = 'tandem.executor.v1.ExecutorService';

describe('server reflection (addReflection)', () => {
  let server: grpc.Server;
  let addr: string;
  const clients: ReflectionClient[] = [];
  const reflect = (version: ReflectionVersion = 'v1'): ReflectionClient => {
    const c = new ReflectionClient(addr, grpc.credentials.createInsecure(), {}, { version });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    server = new grpc.Server();
    new HealthReporter(ServingStatus.SERVING).addTo(server);
    addReflection(server, [EXECUTOR, HEALTH_SERVICE_NAME]);
    addr = `127.0.0.1:${await bindInsecure(server, '127.0.0.1:0')}`;
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    await shutdownServer(server);
  });

  it('knows every service of proto/', () => {
    expect(protoServiceNames()).toEqual(
      expect.arrayContaining([EXECUTOR, 'tandem.planner.v1.PlannerService', 'tandem.agent.v1.AgentService', HEALTH_SERVICE_NAME]),
    );
  });

  it.each(['v1', 'v1alpha'] as const)('lists only the services named (%s)', async (version) => {
    expect((await reflect(version).listServices()).sort()).toEqual([HEALTH_SERVICE_NAME, EXECUTOR].sort());
  });

  it.each(['v1', 'v1alpha'] as const)('gives the file of a service by symbol with the files it imports (%s)', async (version) => {
    const files = await reflect(version).fileContainingSymbol(EXECUTOR);
    const own = files[0];
    expect(own.package).toBe('tandem.executor.v1');
    const service = own.service.find((s) => s.name === 'ExecutorService');
    expect(service?.method.map((m) => m.name).sort()).toEqual(['GetStatus', 'ProbeLink', 'Session']);
    const session = service?.method.find((m) => m.name === 'Session');
    expect(session).toMatchObject({ inputType: '.tandem.executor.v1.SessionRequest', clientStreaming: true, serverStreaming: true });
    // Step.input is a tandem.tensor.v1.Tensor: its file comes along, so a client can decode every field.
    const tensorFile = files.find((f) => f.messageType.some((m) => m.name === 'Tensor'));
    expect(tensorFile?.package).toBe('tandem.tensor.v1');
    const step = own.messageType.find((m) => m.name === 'Step');
    expect(step?.field.map((f) => f.name)).toEqual(['seq', 'stage_begin', 'stage_end', 'input', 'sample']);
  });

  it('gives the file of a message and of the health service by symbol', async () => {
    const c = reflect();
    expect((await c.fileContainingSymbol('tandem.executor.v1.StepResult'))[0].package).toBe('tandem.executor.v1');
    const health = await c.fileContainingSymbol(HEALTH_SERVICE_NAME);
    expect(health[0].service.map((s) => s.name)).toEqual(['Health']);
  });

  it('answers NOT_FOUND for a symbol it does not know, and answers the next request', async () => {
    const c = reflect();
    const err = await c.fileContainingSymbol('tandem.nothing.v1.Nothing').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ReflectionAnswerError);
    expect((err as ReflectionAnswerError).code).toBe(grpc.status.NOT_FOUND);
    expect(await c.listServices()).toContain(EXECUTOR);
  });

  it('refuses a service that proto/ does not define, naming it', () => {
    expect(() => addReflection(new grpc.Server(), [EXECUTOR, 'tandem.executor.v1.ExecutorSerivce'])).toThrow(
      /reflection services must be defined in proto\/ \(.*tandem\.executor\.v1\.ExecutorService.*\), given 'tandem\.executor\.v1\.ExecutorSerivce'/,
    );
  });
});
