import * as grpc from '@grpc/grpc-js';
import { modelIdOf, SplitPipeline } from '@tandem/model';
import { ExecutorServiceClient, channelOptions } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { ExecutorServer, OnnxStageEngine } from '@tandem/server-executor';
import { makeTempModel, type TempModel } from '@tandem/testkit';
import { generate, LinkEmulator, LinkEstimator, LocalStages, REFUSAL_MARGIN_MS, RemoteSession, StepRefusedError, type GenerationDeps } from '@tandem/client-agent';

// The agent's side of EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT, against a real executor in this
// process: a split step the executor refuses (StepRefused) is sent again after the hint, so a
// generation over the client's rate slows down to it and gives the tokens of an undisturbed
// run; when the deadline leaves no room for the hint it ends with RESOURCE_EXHAUSTED at once.

const log = createLogger({ name: 'test', level: 'silent' });
const PROMPT = [464, 2068, 7586, 21831, 18045];
const RATE = 8;

describe('a split generation over its client\'s tokens per second', () => {
  let model: TempModel;
  let executor: ExecutorServer;
  let client: ExecutorServiceClient;
  let local: LocalStages;
  let modelId: string;

  beforeAll(async () => {
    model = await makeTempModel();
    modelId = modelIdOf(model.dir);
    const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    executor = new ExecutorServer({ engine, log, address: '127.0.0.1:0', serverId: 'exec', maxSessions: 16, maxTokensPerSPerClient: RATE, maxContextTokens: 0,
      maxMessageBytes: 8 << 20, batching: true, maxBatch: 8, idleTimeoutMs: 30_000, telemetryIntervalMs: 1000 });
    const { port } = await executor.start();
    client = new ExecutorServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), channelOptions(8 << 20));
    local = await LocalStages.load(model.dir, [0, 1, 2, 3, 4, 5], { slowdown: 1, intraOpNumThreads: 1 });
  });

  afterAll(async () => {
    client?.close();
    await local?.close();
    await executor?.stop({ graceMs: 100 });
    model?.remove();
  });

  const deps = (clientId: string, deadline: number, opened: RemoteSession[]): GenerationDeps => ({
    local, signal: new AbortController().signal, vocabSize: 50257,
    openRemote: async () => {
      const s = await RemoteSession.open(client, { clientId, planEpoch: 0, modelId, deadline });
      opened.push(s);
      return s;
    },
    emulator: new LinkEmulator({ latencyMs: 0, bytesPerMs: 0 }, { latencyMs: 0, bytesPerMs: 0 }),
    estimator: new LinkEstimator(),
    resume: { deadline },
  });

  it('waits out each refusal and gives the tokens of an undisturbed run, at the rate', async () => {
    const pipe = await SplitPipeline.load(model.dir, 'SSSSSS');
    const want = await pipe.generate(PROMPT, { maxNewTokens: 8 }).finally(() => pipe.close());
    const opened: RemoteSession[] = [];
    const t0 = performance.now();
    const stats = await generate(deps('dev-paced', Date.now() + 20_000, opened), 'CCSSSC', PROMPT, 8, () => {});
    const ms = performance.now() - t0;
    expect(stats.ids).toEqual(want);
    expect(opened).toHaveLength(1); // one session all along: refusals do not end it
    expect(opened[0].refusals).toBeGreaterThan(0);
    // 12 server tokens (5 + 7) at 8/s with a burst of 8: 4/8 s at least
    expect(ms).toBeGreaterThanOrEqual(500 - 10);
  });

  it('ends with RESOURCE_EXHAUSTED naming the limit when the deadline leaves no room for the hint', async () => {
    const opened: RemoteSession[] = [];
    const deadline = Date.now() + 400;
    const err = await generate(deps('dev-short', deadline, opened), 'CCSSSC', [...PROMPT, ...PROMPT], 8, () => {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StepRefusedError);
    expect((err as StepRefusedError).code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect((err as StepRefusedError).details).toMatch(/^tokens of client 'dev-short' must stay <= 8 per second \(EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT, a burst of 8\): step seq 2 brings 1 tokens, and 0 are left; retry after \d+ ms \(the deadline is \d+ ms away\)$/);
    // a 10-token prefill leaves a debt of 2: the first decode step's hint (375 ms) does not fit in 400
    expect(Date.now()).toBeLessThan(deadline - REFUSAL_MARGIN_MS / 2);
  });
});
