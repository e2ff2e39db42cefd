import { SplitPipeline } from '@tandem/model';
import { ExecutorServiceClient, executorStatus, type GetStatusResponse } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { OnnxStageEngine, type ExecutorServer } from '@tandem/server-executor';
import { LinkEmulator, type ClientAgent } from '@tandem/client-agent';
import { eventually, makeTempModel, type TempModel } from '@tandem/testkit';
import { sleep } from '@tandem/util';
import { makeCredentials, type TestCredentials } from './credentials';
import { allStages, startAgent, startExecutor } from './stack';

const log = createLogger({ name: 'test', level: 'silent' });
/** Emulated one-way latency of the agent's link, each direction. */
const LATENCY_MS = 40;
const NEW_TOKENS = 8;

// The executor serves mTLS with bearer tokens and the agent connects with its own, as deployed
// (e2e/test/credentials.ts).

describe('an all-server generation through the agent is decoded by the executor', () => {
  let creds: TestCredentials;
  let model: TempModel;
  let executor: ExecutorServer;
  let execClient: ExecutorServiceClient;
  let agent: ClientAgent;
  let stageCount: number;
  const status = (): Promise<GetStatusResponse> => executorStatus(execClient);
  /** One generation through the agent's embedding API (no planner: all-server unless `placement` is given). */
  const generate = (
    prompt: number[],
    maxNewTokens: number,
    placement = '',
    onToken: (id: number, index: number) => void = () => {},
    signal = new AbortController().signal,
  ) => agent.generate({ input: { $case: 'ids', value: { ids: prompt } }, maxNewTokens, placement }, onToken, signal);

  beforeAll(async () => {
    creds = makeCredentials({ clients: ['phone'] });
    model = await makeTempModel();
    const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    stageCount = engine.stageCount;
    const d = { log, creds, telemetryIntervalMs: 1000 };
    let executorAddr: string;
    ({ server: executor, addr: executorAddr } = await startExecutor(engine, d));
    execClient = new ExecutorServiceClient(executorAddr, ...creds.clientArgs());
    ({ server: agent } = await startAgent({ modelDir: model.dir, modelId: engine.modelId, clientId: 'phone', stages: allStages(stageCount), executorAddr }, d, {
      link: new LinkEmulator({ latencyMs: LATENCY_MS, bytesPerMs: 0 }, { latencyMs: LATENCY_MS, bytesPerMs: 0 }),
    }));
  });

  afterAll(async () => {
    execClient?.close();
    await agent?.stop({ graceMs: 100 });
    await executor?.stop({ graceMs: 100 });
    model?.remove();
    creds?.remove();
  });

  it('gives the tokens of a split placement and of the one-process run, without a round trip per token', async () => {
    for (const [prompt, placement] of [
      [[15496, 11, 995, 318], 'CCSSSC'],
      [[464, 2068, 7586, 21831, 18045, 625, 262, 16931], 'CSSSSS'],
    ] as const) {
      const pipe = await SplitPipeline.load(model.dir, 'S'.repeat(stageCount));
      const expected = await pipe.generate([...prompt], { maxNewTokens: NEW_TOKENS });
      await pipe.close();
      const streamed: number[] = [];
      const before = await status();
      const all = await generate([...prompt], NEW_TOKENS, '', (id, index) => {
        expect(index).toBe(streamed.length);
        streamed.push(id);
      });
      const after = await status();
      expect(all.placement).toBe('S'.repeat(stageCount));
      expect(all.stats.ids).toEqual(expected);
      expect(streamed).toEqual(expected);
      expect(after.stepsCompleted - before.stepsCompleted).toBe(NEW_TOKENS); // one server step per token, run by the server
      expect(all.stats.serverComputeMs).toBeGreaterThan(0);
      expect(all.stats.serverQueueMs).toBeGreaterThanOrEqual(0);
      expect(all.stats.clientComputeMs).toBe(0);
      // one uplink and one downlink crossing before the first token ...
      expect(all.stats.ttftMs).toBeGreaterThanOrEqual(2 * LATENCY_MS - 1);
      // ... and the tokens' downlink delays overlap: far below one round trip per token
      expect(all.stats.totalMs).toBeLessThan(NEW_TOKENS * 2 * LATENCY_MS);
      const split = await generate([...prompt], NEW_TOKENS, placement);
      expect(split.stats.ids).toEqual(expected);
      // a split pays the link on every token
      expect(split.stats.totalMs).toBeGreaterThanOrEqual(NEW_TOKENS * 2 * LATENCY_MS - 1);
    }
    expect((await status()).activeSessions).toBe(0);
  });

  it('cancels the executor stream when the generation is aborted, and the executor stops computing', async () => {
    const ac = new AbortController();
    const got: number[] = [];
    const run = generate(
      [1, 2, 3],
      900,
      '',
      (id) => {
        got.push(id);
        if (got.length === 3) ac.abort(new Error('caller went away'));
      },
      ac.signal,
    );
    await expect(run).rejects.toBeDefined();
    expect(got).toHaveLength(3);
    await eventually(async () => (await status()).activeSessions === 0, { timeoutMs: 1000, what: 'executor session freed' });
    const steps = (await status()).stepsCompleted;
    await sleep(200);
    expect((await status()).stepsCompleted).toBe(steps);
  });
});
