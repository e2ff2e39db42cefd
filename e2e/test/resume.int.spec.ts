import * as grpc from '@grpc/grpc-js';
import { modelIdOf, SplitPipeline } from '@tandem/model';
import { ExecutorServiceClient, channelOptions } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { OnnxStageEngine, type ExecutorServer } from '@tandem/server-executor';
import { makeTempModel, type TempModel } from '@tandem/testkit';
import {
  ExecutorLostError,
  generate,
  LinkEmulator,
  LinkEstimator,
  LocalStages,
  RemoteSession,
  RESUME_MARGIN_MS,
  type GenerationDeps,
} from '@tandem/client-agent';
import { makeCredentials, type TestCredentials } from './credentials';
import { startAgent, startExecutor } from './stack';

// Resuming a generation whose executor session is lost, against a real executor in this
// process: the loss is injected (the session is cancelled and the step or stream fails with
// UNAVAILABLE, as when the executor dies), the generation continues on a new session and
// gives the tokens of an undisturbed run. The executor serves mTLS with bearer tokens, and each
// caller sends the token of the client id it opens sessions as (e2e/test/credentials.ts).

const log = createLogger({ name: 'test', level: 'silent' });
const PROMPT = [464, 2068, 7586, 21831, 18045];
const unavailable = (): grpc.ServiceError =>
  Object.assign(new Error('14 UNAVAILABLE: Connection dropped'), {
    code: grpc.status.UNAVAILABLE,
    details: 'Connection dropped',
    metadata: new grpc.Metadata(),
  });

describe('a generation survives its executor session', () => {
  let creds: TestCredentials;
  let model: TempModel;
  let executor: ExecutorServer;
  let client: ExecutorServiceClient;
  let local: LocalStages;
  let modelId: string;

  beforeAll(async () => {
    creds = makeCredentials({ clients: ['dev', 'dev-deadline'] });
    model = await makeTempModel();
    modelId = modelIdOf(model.dir);
    const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    let port: number;
    ({ server: executor, port } = await startExecutor(engine, { log, creds, telemetryIntervalMs: 1000 }));
    client = new ExecutorServiceClient(`127.0.0.1:${port}`, ...creds.clientArgs('dev', channelOptions(8 << 20)));
    local = await LocalStages.load(model.dir, [0, 1, 2, 3, 4, 5], { slowdown: 1, intraOpNumThreads: 1 });
  });

  afterAll(async () => {
    client?.close();
    await local?.close();
    await executor?.stop({ graceMs: 100 });
    model?.remove();
    creds?.remove();
  });

  /**
   * Sessions on the real executor; the `loseAt`-th server call of the first session fails as a
   * lost one (with `takes`, its `loseAt`-th kv_take instead).
   */
  const lossy = (loseAt: number, opened: RemoteSession[], failOpensAfterLoss = 0, takes = false) => {
    let lost = false;
    let failOpens = failOpensAfterLoss;
    return async (): Promise<RemoteSession> => {
      if (lost && failOpens-- > 0) throw unavailable();
      const s = await RemoteSession.open(client, { clientId: 'dev', planEpoch: 0, modelId, deadline: Date.now() + 30_000 });
      opened.push(s);
      if (opened.length === 1) {
        let calls = 0;
        let takeCalls = 0;
        const take = s.kvTake.bind(s);
        s.kvTake = async (...args) => {
          if (takes && ++takeCalls === loseAt) {
            lost = true;
            s.cancel();
            throw unavailable();
          }
          return take(...args);
        };
        const step = s.step.bind(s);
        s.step = async (...args) => {
          if (!takes && ++calls === loseAt) {
            lost = true;
            s.cancel();
            throw unavailable();
          }
          return step(...args);
        };
        const gen = s.generate.bind(s);
        s.generate = (prompt, n, onToken) =>
          gen(prompt, n, (t) => {
            onToken(t);
            if (t.index === loseAt) {
              lost = true;
              s.cancel();
            }
          }).catch((e: unknown) => {
            throw lost ? unavailable() : e;
          });
      }
      return s;
    };
  };

  const deps = (openRemote: () => Promise<RemoteSession>, deadline = Date.now() + 30_000, signal = new AbortController().signal): GenerationDeps => ({
    local,
    openRemote,
    signal,
    vocabSize: 50257,
    emulator: new LinkEmulator({ latencyMs: 0, bytesPerMs: 0 }, { latencyMs: 0, bytesPerMs: 0 }),
    estimator: new LinkEstimator(),
    resume: { deadline, initialBackoffMs: 10 },
  });

  it.each([
    ['a split generation', 'CCSSSC', 5],
    ['a split generation with two server runs', 'CSCSSC', 6],
    ['a server-decoded generation', 'SSSSSS', 4],
  ])('resumes %s on a new session, token-identical to an undisturbed run', async (_what, placement, loseAt) => {
    const pipe = await SplitPipeline.load(model.dir, 'SSSSSS');
    const want = await pipe.generate(PROMPT, { maxNewTokens: 12 }).finally(() => pipe.close());
    const opened: RemoteSession[] = [];
    const streamed: Array<[number, number]> = [];
    const stats = await generate(deps(lossy(loseAt, opened, 2)), placement, PROMPT, 12, (id, index) => streamed.push([index, id]));
    expect(stats.ids).toEqual(want);
    expect(streamed).toEqual(want.map((id, i) => [i, id]));
    expect(stats.resumes).toBe(1);
    expect(opened).toHaveLength(2);
  });

  it.each([
    ['in its decode on the server', 'CCCCCC', 'SSSSSS', 4, false],
    ['in its split decode', 'SSSSSS', 'CCSSSC', 3, false],
    ['in its prefill', 'CSSSSC', 'CCSSSC', 1, false],
    ['at a kv_take of its hand-over', 'SCSSSS', 'CCCSSC', 2, true],
  ])('resumes a phased generation lost %s with the decode placement on a new session, token-identical', async (_what, prefill, decode, loseAt, takes) => {
    const pipe = await SplitPipeline.load(model.dir, 'SSSSSS');
    const want = await pipe.generate(PROMPT, { maxNewTokens: 12 }).finally(() => pipe.close());
    const opened: RemoteSession[] = [];
    const streamed: Array<[number, number]> = [];
    const stats = await generate(deps(lossy(loseAt, opened, 1, takes)), prefill, PROMPT, 12, (id, index) => streamed.push([index, id]), decode);
    expect(stats.ids).toEqual(want);
    expect(streamed).toEqual(want.map((id, i) => [i, id]));
    expect(stats.resumes).toBe(1);
    expect(opened).toHaveLength(2);
  });

  it('gives up with UNAVAILABLE before the deadline when no session opens again', async () => {
    const deadline = Date.now() + 800;
    const opened: RemoteSession[] = [];
    const err = await generate(deps(lossy(3, opened, 1000), deadline), 'CCSSSC', PROMPT, 12, () => {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExecutorLostError);
    expect((err as ExecutorLostError).code).toBe(grpc.status.UNAVAILABLE);
    expect((err as ExecutorLostError).details).toMatch(/lost after 2 generated tokens and could not be resumed within the deadline \(\d+ attempts/);
    expect(Date.now()).toBeLessThanOrEqual(deadline - RESUME_MARGIN_MS / 2);
    expect(opened).toHaveLength(1);
  });

  it('fails at once when the first session cannot be opened, and does not resume after an abort', async () => {
    const first = await generate(
      deps(() => Promise.reject(unavailable())),
      'CCSSSC',
      PROMPT,
      4,
      () => {},
    ).catch((e: unknown) => e);
    expect((first as grpc.ServiceError).code).toBe(grpc.status.UNAVAILABLE);
    expect(first).not.toBeInstanceOf(ExecutorLostError);
    const ac = new AbortController();
    const opened: RemoteSession[] = [];
    const err = await generate(deps(lossy(3, opened), Date.now() + 30_000, ac.signal), 'CCSSSC', PROMPT, 12, (_id, index) => {
      if (index === 1) ac.abort(new Error('cancelled by the caller'));
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect(opened).toHaveLength(1);
  });

  it("gives the executor session the caller's remaining deadline, capped by the agent's own", async () => {
    const { server: agent } = await startAgent(
      {
        modelDir: model.dir,
        modelId,
        clientId: 'dev-deadline',
        stages: [0, 1, 2, 3, 4, 5],
        executorAddr: client.getChannel().getTarget().replace(/^dns:/, ''),
      },
      { log, creds, telemetryIntervalMs: 1000 },
      { deadlineMs: 60_000 },
    );
    const session = jest.spyOn(ExecutorServiceClient.prototype, 'session');
    try {
      const req = { input: { $case: 'ids' as const, value: { ids: PROMPT } }, maxNewTokens: 2, placement: 'CCSSSC' };
      const callerDeadline = Date.now() + 7000;
      await agent.generate(req, () => {}, new AbortController().signal, callerDeadline);
      expect(session.mock.calls.at(-1)?.[0]).toEqual({ deadline: callerDeadline });
      const t0 = Date.now();
      await agent.generate(req, () => {}, new AbortController().signal);
      const own = (session.mock.calls.at(-1)?.[0] as { deadline: number }).deadline;
      expect(own).toBeGreaterThanOrEqual(t0 + 60_000);
      expect(own).toBeLessThanOrEqual(Date.now() + 60_000);
    } finally {
      session.mockRestore();
      await agent.stop({ graceMs: 100 });
    }
  });
});
