import * as grpc from '@grpc/grpc-js';
import { modelIdOf, SplitPipeline } from '@tandem/model';
import { ExecutorServiceClient, channelOptions } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { OnnxStageEngine, type ExecutorServer } from '@tandem/server-executor';
import { makeTempModel, type TempModel } from '@tandem/testkit';
import {
  generate,
  GenerateRefusedError,
  LinkEmulator,
  LinkEstimator,
  LocalStages,
  REFUSAL_MARGIN_MS,
  RemoteSession,
  StepRefusedError,
  type GenerationDeps,
  type GenerationStats,
} from '@tandem/client-agent';
import { makeCredentials, type TestCredentials } from './credentials';
import { startExecutor } from './stack';

// The agent's side of EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT, against a real executor in this
// process: a split step the executor refuses (StepRefused) is sent again after the hint, and a
// server-side generation it refuses at its start (trailer `retry-after-ms`) is sent again on a
// new session after the hint, so a generation over the client's rate slows down to it and gives
// the tokens of an undisturbed run; when the deadline leaves no room for the hint it ends with
// RESOURCE_EXHAUSTED and the executor's message at once. The executor serves mTLS with bearer
// tokens, and each client id's sessions go over a channel with that id's token
// (e2e/test/credentials.ts).

const log = createLogger({ name: 'test', level: 'silent' });
const PROMPT = [464, 2068, 7586, 21831, 18045];
/** A 12-token prompt: its prefill leaves a client's bucket (RATE, a burst of RATE) 4 tokens in debt, so the next token is 625 ms away. */
const LONG = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
const RATE = 8;
const CLIENT_IDS = ['dev-paced', 'dev-short', 'dev-gen', 'dev-gen-short'];

describe("a generation over its client's tokens per second", () => {
  let creds: TestCredentials;
  let model: TempModel;
  let executor: ExecutorServer;
  /** A client per id, with that id's token. */
  let clients: Map<string, ExecutorServiceClient>;
  let local: LocalStages;
  let modelId: string;
  /** Undisturbed all-server tokens of PROMPT and LONG, 8 each. */
  let want: { prompt: number[]; long: number[] };

  beforeAll(async () => {
    creds = makeCredentials({ clients: CLIENT_IDS });
    model = await makeTempModel();
    modelId = modelIdOf(model.dir);
    const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    let port: number;
    ({ server: executor, port } = await startExecutor(engine, { log, creds, telemetryIntervalMs: 1000 }, { maxTokensPerSPerClient: RATE }));
    clients = new Map(CLIENT_IDS.map((id) => [id, new ExecutorServiceClient(`127.0.0.1:${port}`, ...creds.clientArgs(id, channelOptions(8 << 20)))]));
    local = await LocalStages.load(model.dir, [0, 1, 2, 3, 4, 5], { slowdown: 1, intraOpNumThreads: 1 });
    const pipe = await SplitPipeline.load(model.dir, 'SSSSSS');
    want = { prompt: await pipe.generate(PROMPT, { maxNewTokens: 8 }), long: await pipe.generate(LONG, { maxNewTokens: 8 }) };
    await pipe.close();
  });

  afterAll(async () => {
    for (const c of clients?.values() ?? []) c.close();
    await local?.close();
    await executor?.stop({ graceMs: 100 });
    model?.remove();
    creds?.remove();
  });

  const deps = (clientId: string, deadline: number, opened: RemoteSession[]): GenerationDeps => ({
    local,
    signal: new AbortController().signal,
    vocabSize: 50257,
    openRemote: async () => {
      const s = await RemoteSession.open(clients.get(clientId)!, { clientId, planEpoch: 0, modelId, deadline });
      opened.push(s);
      return s;
    },
    emulator: new LinkEmulator({ latencyMs: 0, bytesPerMs: 0 }, { latencyMs: 0, bytesPerMs: 0 }),
    estimator: new LinkEstimator(),
    resume: { deadline },
  });

  it('waits out each refusal of a split step and gives the tokens of an undisturbed run, at the rate', async () => {
    const opened: RemoteSession[] = [];
    const t0 = performance.now();
    const stats = await generate(deps('dev-paced', Date.now() + 20_000, opened), 'CCSSSC', PROMPT, 8, () => {});
    const ms = performance.now() - t0;
    expect(stats.ids).toEqual(want.prompt);
    expect(opened).toHaveLength(1); // one session all along: refusals do not end it
    expect(stats.refusals).toBe(opened[0].refusals);
    expect(opened[0].refusals).toBeGreaterThan(0);
    // 12 server tokens (5 + 7) at 8/s with a burst of 8: 4/8 s at least
    expect(ms).toBeGreaterThanOrEqual(500 - 10);
  });

  it('ends a split generation with RESOURCE_EXHAUSTED naming the limit when the deadline leaves no room for the hint', async () => {
    const opened: RemoteSession[] = [];
    const deadline = Date.now() + 400;
    const err = await generate(deps('dev-short', deadline, opened), 'CCSSSC', [...PROMPT, ...PROMPT], 8, () => {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StepRefusedError);
    expect((err as StepRefusedError).code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect((err as StepRefusedError).details).toMatch(
      /^tokens of client 'dev-short' must stay <= 8 per second \(EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT, a burst of 8\): step seq 2 brings 1 tokens, and 0 are left; retry after \d+ ms \(the deadline is \d+ ms away\)$/,
    );
    // a 10-token prefill leaves a debt of 2: the first decode step's hint (375 ms) does not fit in 400
    expect(Date.now()).toBeLessThan(deadline - REFUSAL_MARGIN_MS / 2);
  });

  /** Starts a 12-token-prompt server-side generation of `clientId` (emptying its bucket) and resolves once its first token came, with the generation still running. */
  const emptyTheBucket = async (clientId: string, maxNewTokens: number): Promise<{ running: Promise<GenerationStats> }> => {
    let first!: () => void;
    const started = new Promise<void>((r) => {
      first = r;
    });
    const running = generate(deps(clientId, Date.now() + 20_000, []), 'SSSSSS', LONG, maxNewTokens, (_id, i) => {
      if (i === 0) first();
    });
    await Promise.race([started, running]);
    return { running }; // not the promise itself: an async function would wait for it
  };

  it('sends a server-side generation refused at its start again after the hint, on a new session, and gives the tokens of an undisturbed run', async () => {
    const { running } = await emptyTheBucket('dev-gen', 8);
    const opened: RemoteSession[] = [];
    const t0 = performance.now();
    const stats = await generate(deps('dev-gen', Date.now() + 20_000, opened), 'SSSSSS', PROMPT, 8, () => {});
    const ms = performance.now() - t0;
    expect(stats.ids).toEqual(want.prompt);
    expect(stats.refusals).toBeGreaterThan(0);
    expect(opened).toHaveLength(stats.refusals + 1); // each refusal ended its session
    expect(stats.resumes).toBe(0);
    const first = await running;
    expect(first.ids).toEqual(want.long);
    process.stderr.write(`server-side at ${RATE} tokens/s: a second generation refused ${stats.refusals} times, done in ${Math.round(ms)} ms\n`);
  });

  it("ends a server-side generation refused at its start with RESOURCE_EXHAUSTED and the executor's message when the deadline leaves no room for the hint", async () => {
    const { running } = await emptyTheBucket('dev-gen-short', 2);
    const opened: RemoteSession[] = [];
    const deadline = Date.now() + 400;
    const err = await generate(deps('dev-gen-short', deadline, opened), 'SSSSSS', PROMPT, 8, () => {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GenerateRefusedError);
    expect((err as GenerateRefusedError).code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect((err as GenerateRefusedError).details).toMatch(
      /^tokens of client 'dev-gen-short' must stay <= 8 per second \(EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT, a burst of 8\): generate seq 1 needs a token to start, and 0 are left; retry after \d+ ms \(the deadline is \d+ ms away\)$/,
    );
    expect(opened).toHaveLength(1);
    expect(Date.now()).toBeLessThan(deadline - REFUSAL_MARGIN_MS / 2);
    expect((await running).ids).toEqual(want.long.slice(0, 2));
  });
});
