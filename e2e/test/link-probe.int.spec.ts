import { LinkEmulator, type ClientAgent } from '@tandem/client-agent';
import { modelIdOf, readManifest } from '@tandem/model';
import { generateVia, type AgentServiceClient } from '@tandem/protocol';
import { OnnxStageEngine, type ExecutorServer } from '@tandem/server-executor';
import { createLogger } from '@tandem/service-kit';
import { eventually, makeTempModel, type TempModel } from '@tandem/testkit';
import { makeCredentials, type TestCredentials } from './credentials';
import { AgentFleet, allStages, startExecutor, stopStack, type Deployment } from './stack';

// The link an agent publishes is measured, not guessed: a device whose generations move only
// tokens (all-server, or a prefill on the device whose KV cache goes up with no answer of its
// own) still prices its uplink right. The agent probes each direction with the executor's
// ProbeLink when it starts, and times KV puts by the answer that follows them. Real executor and
// agents, mTLS and tokens, an emulated link (slept, as the load test's devices are).

const log = createLogger({ name: 'test', level: 'silent' });
const UP = 1000; // bytes/ms: 8 Mbit/s
// 2000, not faster: the probe's download times the executor's encoding and the TLS of 256 KiB
// too, which on a loaded machine took some 14 ms; at 4000 bytes/ms (65 ms of emulated transfer)
// that put a CI run's estimate 18 % low, at 2000 (131 ms) it stays within the 15 % asserted.
const DOWN = 2000;
const link = (): LinkEmulator => new LinkEmulator({ latencyMs: 5, bytesPerMs: UP }, { latencyMs: 5, bytesPerMs: DOWN });

let creds: TestCredentials;
let model: TempModel;
let executor: ExecutorServer;
const fleet = new AgentFleet();
let d: Deployment;
let stageCount: number;
let execAddr: string;

beforeAll(async () => {
  creds = makeCredentials({ agents: ['probed', 'unprobed', 'split'], executors: ['exec'] });
  d = { log, creds, telemetryIntervalMs: 1000 };
  model = await makeTempModel();
  stageCount = (await readManifest(model.dir)).stages.length;
  const exec = await startExecutor(await OnnxStageEngine.load(model.dir), d);
  executor = exec.server;
  execAddr = exec.addr;
});

afterAll(async () => {
  await stopStack({ ...fleet, executor, model });
  creds?.remove();
});

function agent(clientId: string, linkProbeBytes?: number): Promise<{ agent: ClientAgent; client: AgentServiceClient }> {
  const basics = { modelDir: model.dir, modelId: modelIdOf(model.dir), clientId, stages: allStages(stageCount), executorAddr: execAddr };
  return fleet.start(basics, d, { link: link(), ...(linkProbeBytes === undefined ? {} : { linkProbeBytes }) });
}

describe('the link an agent publishes', () => {
  it('is probed in both directions before the agent starts publishing (ProbeLink through mTLS and tokens), within 15 % of the emulated link', async () => {
    const { agent: a } = await agent('probed');
    // start() resolves once telemetry would publish its first profile: that profile must state
    // the probed link, not the estimator's start-up guess (the first plans are priced on it).
    const p = a.profile();
    expect(p.uplink?.bytesPerMs).toBeGreaterThan(UP * 0.85);
    expect(p.uplink?.bytesPerMs).toBeLessThan(UP * 1.15);
    expect(p.downlink?.bytesPerMs).toBeGreaterThan(DOWN * 0.85);
    expect(p.downlink?.bytesPerMs).toBeLessThan(DOWN * 1.15);
  });

  it('without probes, is measured by a device prefill whose KV cache goes up to a server decode', async () => {
    const { agent: a, client } = await agent('unprobed', 0);
    // The latency taken off each transfer comes from pings (every 2 s); on a busy machine the
    // first may be slow: wait until one was near the link's 10 ms round trip.
    await eventually(() => (a.profile().uplink?.latencyMs ?? Infinity) < 10, { timeoutMs: 20_000, what: 'a ping near the link round trip' });
    // Nothing measured the uplink yet: the estimate's start-up guess (far above the link).
    expect(a.profile().uplink?.bytesPerMs).toBeGreaterThan(UP * 100);
    // 42 prompt tokens: every attention stage's KV cache (40+ KiB in all) crosses the uplink once.
    const prompt = Array.from({ length: 42 }, (_, i) => [464, 2068, 7586, 21831, 18045, 625, 262][i % 7]);
    const placement = 'C'.repeat(stageCount);
    const decodePlacement = 'S'.repeat(stageCount);
    const r = await generateVia(client, { input: { $case: 'ids', value: { ids: prompt } }, maxNewTokens: 4, placement, decodePlacement });
    expect(r.summary).toMatchObject({ placement, decodePlacement });
    expect(r.summary.handoverMs).toBeGreaterThan(40); // 42 KiB up at 1000 B/ms
    const up = a.profile().uplink?.bytesPerMs ?? 0;
    // The puts' time runs to the first decoded token's answer, which also holds the executor's
    // import of the cache: at most the link's rate, and below it on a busy host (0.52 × in one CI
    // run), yet far from the start-up guess above.
    expect(up).toBeGreaterThan(UP * 0.4);
    expect(up).toBeLessThan(UP * 1.15);
  });

  it("states a split step's overhead beyond the link, the server's queue and its service once it has split steps, apart from the link", async () => {
    const { agent: a, client } = await agent('split');
    expect(a.profile().stepOverheadMs).toBeUndefined();
    // Every other stage on the server: each token crosses the 5 ms link many times.
    const placement = Array.from({ length: stageCount }, (_, i) => (i % 2 ? 'S' : 'C')).join('');
    const r = await generateVia(client, { input: { $case: 'ids', value: { ids: [464, 2068, 7586, 21831] } }, maxNewTokens: 4, placement });
    expect(r.summary.placement).toBe(placement);
    const overhead = a.profile().stepOverheadMs;
    expect(overhead).toBeGreaterThanOrEqual(0);
    // Message handling on this machine, not the link: its 10 ms round trip and transfers are taken off.
    expect(overhead).toBeLessThan(10);
    expect(a.profile().uplink?.latencyMs).toBeGreaterThan(4.5);
  });
});
