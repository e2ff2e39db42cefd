import * as grpc from '@grpc/grpc-js';
import { channelOptions, ExecutorServiceClient, HealthClient, type GetStatusResponse, type ServingStatus } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { eventually, EXECUTOR_SETTINGS, makeTempModel, type TempModel } from '@tandem/testkit';
import { ExecutorServer, OnnxStageEngine, type ExecutorServerOptions, type StageEngine } from '../src';
import { TestSession } from './session-client';

/** What a test sets of an executor; the rest is {@link startTestExecutor}'s defaults. */
export type TestExecutorOptions = Partial<Omit<ExecutorServerOptions, 'engine' | 'log'>>;

/** A real executor on 127.0.0.1:0 with a plaintext client, and the sessions the test opened on it. */
export interface TestExecutor {
  readonly server: ExecutorServer;
  readonly client: ExecutorServiceClient;
  /** host:port it listens on. */
  readonly addr: string;
  /** The executor's GetStatus (deadline 10 s). */
  status(): Promise<GetStatusResponse>;
  /** The executor's grpc.health.v1 status (deadline 10 s). */
  health(): Promise<ServingStatus>;
  /** Opens a session stream with a deadline `deadlineMs` from now; it is cancelled by {@link cancelSessions}. */
  session(deadlineMs?: number): TestSession;
  /** Cancels every session opened so far; with `waitMs`, waits that long at most for the executor to report none active. */
  cancelSessions(waitMs?: number): Promise<void>;
  /** Closes the clients and stops the executor (grace 100 ms unless `graceMs`). */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Starts an executor on `engine`, silent, with the defaults the integration tests share:
 * 16 sessions, the model's full context, 8 MiB messages, batching (8 per batch), a 30 s idle
 * timeout and no NATS.
 */
export async function startTestExecutor(engine: StageEngine, opts: TestExecutorOptions = {}): Promise<TestExecutor> {
  const server = new ExecutorServer({
    engine,
    log: createLogger({ name: 'test', level: 'silent' }),
    ...EXECUTOR_SETTINGS,
    serverId: 'exec-test',
    telemetryIntervalMs: 1000,
    ...opts,
  });
  const { port } = await server.start();
  const addr = `127.0.0.1:${port}`;
  const client = new ExecutorServiceClient(addr, grpc.credentials.createInsecure(), channelOptions(opts.maxMessageBytes ?? EXECUTOR_SETTINGS.maxMessageBytes));
  const healthClient = new HealthClient(addr, grpc.credentials.createInsecure());
  const opened: TestSession[] = [];
  const deadline = (): { deadline: number } => ({ deadline: Date.now() + 10_000 });
  const status = (): Promise<GetStatusResponse> =>
    new Promise((resolve, reject) => client.getStatus({}, new grpc.Metadata(), deadline(), (e, r) => (e ? reject(e) : resolve(r))));
  const health = (): Promise<ServingStatus> =>
    new Promise((resolve, reject) => healthClient.check({ service: '' }, new grpc.Metadata(), deadline(), (e, r) => (e ? reject(e) : resolve(r.status))));
  return {
    server,
    client,
    addr,
    status,
    health,
    session: (deadlineMs = 30_000) => {
      const s = new TestSession(client.session({ deadline: Date.now() + deadlineMs }));
      opened.push(s);
      return s;
    },
    cancelSessions: async (waitMs) => {
      for (const s of opened.splice(0)) s.call.cancel();
      if (waitMs !== undefined) await eventually(async () => (await status()).activeSessions === 0, { timeoutMs: waitMs, what: 'sessions freed' });
    },
    stop: async (graceMs = 100) => {
      healthClient.close();
      client.close();
      await server.stop({ graceMs });
    },
  };
}

/** An executor of one describe block, with the model and the engine it serves (executorForSuite). */
export interface SuiteExecutor extends TestExecutor {
  /** A temporary model of the tiny preset. */
  readonly model: TempModel;
  /** The model's OnnxStageEngine, one thread. */
  readonly engine: StageEngine;
}

/**
 * Starts a test executor (`opts`) on a temporary model before the tests of the describe block
 * that calls it, hands it to `use`, and after them stops it and removes the model.
 */
export function executorForSuite(opts: TestExecutorOptions, use: (exec: SuiteExecutor) => void): void {
  let model: TempModel | undefined;
  let exec: TestExecutor | undefined;
  beforeAll(async () => {
    model = await makeTempModel();
    const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    exec = await startTestExecutor(engine, opts);
    use({ ...exec, model, engine });
  });
  afterAll(async () => {
    await exec?.stop();
    model?.remove();
  });
}
