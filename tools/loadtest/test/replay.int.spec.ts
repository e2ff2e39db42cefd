import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { ClientAgent, LinkEmulator, recordReplay, ReplayRecording } from '@tandem/client-agent';
import { modelIdOf, readManifest, SplitPipeline } from '@tandem/model';
import { AgentServiceClient, generateVia, type GenerationResult } from '@tandem/protocol';
import { ExecutorServer, OnnxStageEngine } from '@tandem/server-executor';
import { createLogger } from '@tandem/service-kit';
import { EXECUTOR_SETTINGS, makeTempModel, type TempModel } from '@tandem/testkit';

// The load test's device emulation: client-agents replaying their stages from a recording.

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'tandem-replay-test-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('replayed device stages (EMULATION)', () => {
  const log = createLogger({ name: 'test', level: 'silent' });
  let model: TempModel;
  let executor: ExecutorServer;
  let executorAddr: string;
  let file: string;
  let rec: ReplayRecording;
  const prompts = [[15496, 11, 995, 318], [464, 2068, 7586, 21831, 18045, 625, 262], [40]];
  const agents: ClientAgent[] = [];
  const clients: AgentServiceClient[] = [];

  beforeAll(async () => {
    model = await makeTempModel();
    const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    executor = new ExecutorServer({
      engine,
      log,
      ...EXECUTOR_SETTINGS,
      serverId: 'exec',
      telemetryIntervalMs: 1000,
    });
    executorAddr = `127.0.0.1:${(await executor.start()).port}`;
    file = join(dir, 'replay.bin');
    const m = await readManifest(model.dir);
    const progress: number[] = [];
    await recordReplay({
      modelDir: model.dir,
      modelId: modelIdOf(model.dir),
      prompts: prompts.map((ids) => ({ ids, maxNewTokens: 6 })),
      out: file,
      onProgress: (d) => progress.push(d),
    });
    expect(progress).toEqual([1, 2, 3]);
    rec = ReplayRecording.load(file, { modelId: modelIdOf(model.dir), stageCount: m.stages.length, nEmbd: m.config.nEmbd, vocabSize: m.config.vocabSize });
  }, 60_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    for (const a of agents) await a.stop({ graceMs: 100 });
    await executor?.stop({ graceMs: 100 });
    model?.remove();
  });

  async function startAgent(slowdown: number): Promise<AgentServiceClient> {
    const stageCount = rec.header.stageCount;
    const agent = new ClientAgent({
      modelDir: model.dir,
      modelId: modelIdOf(model.dir),
      clientId: `replay-${slowdown}`,
      clientClass: 'default',
      address: '127.0.0.1:0',
      stages: Array.from({ length: stageCount }, (_, i) => i),
      threads: 1,
      slowdown,
      replay: rec,
      link: new LinkEmulator({ latencyMs: 0, bytesPerMs: 0 }, { latencyMs: 0, bytesPerMs: 0 }),
      executorAddr,
      telemetryIntervalMs: 1000,
      deadlineMs: 30_000,
      maxMessageBytes: 8 << 20,
      log,
    });
    agents.push(agent);
    const c = new AgentServiceClient(`127.0.0.1:${(await agent.start()).port}`, grpc.credentials.createInsecure());
    clients.push(c);
    return c;
  }

  const generate = (c: AgentServiceClient, ids: number[], placement: string, maxNewTokens = 6): Promise<GenerationResult> =>
    generateVia(c, { input: { $case: 'ids', value: { ids } }, maxNewTokens, placement });

  it('refuses a recording that is not one, or is of another model, naming the variable and the rule', async () => {
    const m = await readManifest(model.dir);
    const shape = { modelId: modelIdOf(model.dir), stageCount: m.stages.length, nEmbd: m.config.nEmbd, vocabSize: m.config.vocabSize };
    const junk = join(dir, 'junk.bin');
    writeFileSync(junk, 'not a recording at all, just text');
    expect(() => ReplayRecording.load(junk, shape)).toThrow(/AGENT_REPLAY_FILE .*junk\.bin must be a tandem replay recording/);
    expect(() => ReplayRecording.load(join(dir, 'absent.bin'), shape)).toThrow(
      /AGENT_REPLAY_FILE must name a readable recording, given '.*absent\.bin' \(ENOENT\)/,
    );
    expect(() => ReplayRecording.load(file, { ...shape, nEmbd: shape.nEmbd * 2 })).toThrow(/must be recorded from this model \(nEmbd 128\), given 64/);
    // A truncated file: its header no longer parses or fits.
    writeFileSync(junk, readFileSync(file).subarray(0, 4096));
    expect(() => ReplayRecording.load(junk, shape)).toThrow(/AGENT_REPLAY_FILE/);
  });

  it('gives the tokens of a one-process run for every placement, with the server computing its stages for real', async () => {
    const c = await startAgent(1);
    const expected: number[][] = [];
    const pipe = await SplitPipeline.load(model.dir, 'SSSSSS');
    for (const ids of prompts) expected.push(await pipe.generate(ids, { maxNewTokens: 6 }));
    await pipe.close();
    // The recording holds the one-process tokens.
    expect(prompts.map((ids) => rec.prompt(ids)!.tokens)).toEqual(expected);
    for (const placement of ['CCCCCC', 'CCSSSC', 'SCSCSC', 'SSSSSC', 'CSSSSS', 'SSSSSS']) {
      const got = await Promise.all(prompts.map((ids) => generate(c, ids, placement)));
      expect(got.map((g) => g.ids)).toEqual(expected);
      // Shorter generations replay a prefix of the recording.
      expect((await generate(c, prompts[1], placement, 3)).ids).toEqual(expected[1].slice(0, 3));
    }
  }, 60_000);

  it('fails a generation whose history is not in the recording, naming the miss, and serves all-server ones', async () => {
    const c = await startAgent(1);
    const unknown = [15496, 11, 995];
    await expect(generate(c, unknown, 'CCSSSC')).rejects.toMatchObject({
      code: grpc.status.FAILED_PRECONDITION,
      details: expect.stringMatching(/replay miss: a prompt of 3 tokens is not in the recorded pool/),
    });
    await expect(generate(c, prompts[0], 'CCSSSC', 7)).rejects.toMatchObject({
      details: expect.stringMatching(/replay miss: step 6 is beyond the 6 recorded tokens/),
    });
    const pipe = await SplitPipeline.load(model.dir, 'SSSSSS');
    const want = await pipe.generate(unknown, { maxNewTokens: 4 });
    await pipe.close();
    expect((await generate(c, unknown, 'SSSSSS', 4)).ids).toEqual(want);
  }, 30_000);

  it('times a replayed stage to its recorded cost × the slow-down and publishes exactly that cost', async () => {
    // Slow enough that the modelled time dominates the scheduler's noise on a busy host.
    const slowdown = 500;
    const c = await startAgent(slowdown);
    const agent = agents[agents.length - 1];
    const costs = rec.header.costs;
    const published = agent.profile().stages;
    for (const st of published) {
      expect(st.prefillMsPerToken).toBeCloseTo(costs[st.stage].prefillMsPerToken * slowdown, 9);
      expect(st.decodeMs).toBeCloseTo(costs[st.stage].decodeMs * slowdown, 9);
    }
    const placement = 'CCCSSS';
    const { ids, summary } = await generate(c, prompts[1], placement);
    expect(ids).toEqual(rec.prompt(prompts[1])!.tokens);
    let modelled = 0;
    for (let st = 0; st < 3; st++) modelled += slowdown * (costs[st].prefillMsPerToken * prompts[1].length + costs[st].decodeMs * 5);
    // Each step's chain of local stages (6 of them: a server hop ends each) is early by less
    // than the 0.5 ms a timer is not asked to sleep; late by timer overshoot only.
    expect(summary.clientComputeMs).toBeGreaterThan(modelled - 6 * 0.5);
    expect(summary.clientComputeMs).toBeLessThan(modelled * 1.5);
  }, 30_000);
});
