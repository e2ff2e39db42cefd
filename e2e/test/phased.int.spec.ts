import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { recordReplay, ReplayRecording, type ClientAgent } from '@tandem/client-agent';
import { modelIdOf, readManifest, SplitPipeline } from '@tandem/model';
import { AgentServiceClient, generateVia, ExecutorServiceClient, executorStatus, type ClientPlan } from '@tandem/protocol';
import { OnnxStageEngine, type ExecutorServer } from '@tandem/server-executor';
import { createLogger } from '@tandem/service-kit';
import { capturingLogger, eventually, makeTempModel, type NatsServerHandle, type TempModel } from '@tandem/testkit';
import { credentialsForSuite, type TestCredentials } from './credentials';
import {
  allStages,
  oneClassPlan,
  startAgent,
  startExecutor,
  stopStack,
  stubPlanner,
  watchOutcomes,
  type Deployment,
  type OutcomeWatch,
  type StubPlanner,
} from './stack';

// Phased plans end to end: a planner stand-in (a real gRPC port, mTLS and tokens) hands the
// agents plans whose prefill and decode are placed apart; the agents (one computing its
// stages, one replaying them from a recording as the load test's devices do) move each stage
// that changes side through the real executor (kv_take, kv_put, generate after the prefill),
// and the tokens are those of the one-process run. The services run as deployed (mTLS, tokens,
// a nats-server with one user per service); the test reads the outcomes as its own NATS user.

const log = createLogger({ name: 'test', level: 'silent' });
const PROMPT = [464, 2068, 7586, 21831, 18045, 625, 262];
const NEW = 6;

/** One class covering every prompt, with the given phases. */
const planOf = (clientId: string, epoch: number, placement: string, decodePlacement: string): ClientPlan =>
  oneClassPlan(clientId, epoch, { expectedNewTokens: NEW, placement, decodePlacement, predictedHandoverMs: 2 }, { algorithm: 'dp-phased' });

let creds: TestCredentials;
credentialsForSuite({ agents: ['dev', 'dev-replay', 'dev-private'], executors: ['exec'] }, (c) => (creds = c));

describe('phased plans through the real executor and agents', () => {
  let model: TempModel;
  let dir: string;
  let nats: NatsServerHandle;
  let outcomes: OutcomeWatch;
  let executor: ExecutorServer;
  let execClient: ExecutorServiceClient;
  let planner: StubPlanner;
  const agents = new Map<string, ClientAgent>();
  const agentAddrs = new Map<string, string>();
  let expected: number[];
  let epoch = 1_000;
  /** The private agent's warnings (its refused plans). */
  const privateLog = capturingLogger('warn');

  beforeAll(async () => {
    model = await makeTempModel();
    dir = mkdtempSync(join(tmpdir(), 'tandem-phased-e2e-'));
    nats = await creds.startNats();
    outcomes = await watchOutcomes(creds, nats.url);
    const d: Deployment = { log, creds, natsUrl: nats.url, telemetryIntervalMs: 200 };
    const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    const S = engine.stageCount;
    let executorAddr: string;
    ({ server: executor, addr: executorAddr } = await startExecutor(engine, d));
    execClient = new ExecutorServiceClient(executorAddr, ...creds.clientArgs());
    planner = await stubPlanner(creds);
    const pipe = await SplitPipeline.load(model.dir, 'C'.repeat(S));
    expected = await pipe.generate(PROMPT, { maxNewTokens: NEW });
    await pipe.close();
    const m = await readManifest(model.dir);
    const file = join(dir, 'replay.bin');
    await recordReplay({ modelDir: model.dir, modelId: modelIdOf(model.dir), prompts: [{ ids: PROMPT, maxNewTokens: NEW }], out: file });
    const replay = ReplayRecording.load(file, { modelId: engine.modelId, stageCount: S, nEmbd: m.config.nEmbd, vocabSize: m.config.vocabSize });
    for (const [clientId, over] of [
      ['dev', {}],
      ['dev-replay', { replay }],
      ['dev-private', { private: true, log: privateLog.log }],
    ] as const) {
      const { server, addr } = await startAgent({ modelDir: model.dir, modelId: engine.modelId, clientId, stages: allStages(S), executorAddr }, d, {
        plannerAddr: planner.addr,
        ...over,
      });
      agents.set(clientId, server);
      agentAddrs.set(clientId, addr);
    }
  });

  afterAll(async () => {
    await outcomes?.stop();
    planner?.stop();
    await stopStack({ clients: [execClient], agents: [...agents.values()], executor, nats, model });
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** Hands `clientId` the phased plan and waits until its agent follows it; resolves with the epoch. */
  const follow = async (clientId: string, placement: string, decode: string): Promise<number> => {
    const e = ++epoch;
    planner.push(planOf(clientId, e, placement, decode));
    const agent = agents.get(clientId)!;
    await eventually(() => agent.status().planEpoch === e, { what: `${clientId} following plan ${e}` });
    return e;
  };
  const run = (clientId: string) =>
    agents
      .get(clientId)!
      .generate({ input: { $case: 'ids', value: { ids: PROMPT } }, maxNewTokens: NEW, placement: '' }, () => {}, new AbortController().signal);

  // [prefill, decode, attention stages put, attention stages taken] (tiny model: embed, attn, mlp, attn, mlp, head)
  const PAIRS = [
    ['SSSSSS', 'CCCCCC', 0, 2], // server prefill, device decode
    ['CCCCCC', 'SSSSSS', 2, 0], // device prefill, server decode (the executor decodes: generate after the prefill)
    ['CCSSSC', 'CSSCSC', 1, 1], // mixed: stage 1 goes up, stage 3 comes down, stage 2 stays on the server
    ['CSSSSC', 'CCSSCC', 0, 1], // only some middle stages move
  ] as const;

  for (const clientId of ['dev', 'dev-replay']) {
    it.each(PAIRS)(`${clientId}: prefill %s, decode %s gives the one-process tokens`, async (prefill, decode, put, taken) => {
      const e = await follow(clientId, prefill, decode);
      const kvBytes = 2 * 4 * PROMPT.length * 64; // one attention stage's keys plus values for the prompt (nEmbd 64)
      const before = await executorStatus(execClient);
      const r = await run(clientId);
      expect(r.stats.ids).toEqual(expected);
      expect(r).toMatchObject({ placement: prefill, decodePlacement: decode, epoch: e });
      expect(r.stats.kvUpBytes).toBe(put * kvBytes);
      expect(r.stats.kvDownBytes).toBe(taken * kvBytes);
      expect(r.stats.handoverMs).toBeGreaterThan(0);
      expect(r.stats.resumes).toBe(0);
      const after = await executorStatus(execClient);
      expect(after.sessionsOpened - before.sessionsOpened).toBe(1);
      await eventually(async () => (await executorStatus(execClient)).activeSessions === 0, { what: 'the session freed' });
      // the outcome tells the planner both phases
      const { o } = await eventually(() => outcomes.seen.find((x) => x.o.clientId === clientId && x.o.planEpoch === e), { what: `the outcome of plan ${e}` });
      expect(o).toMatchObject({ placement: prefill, decodePlacement: decode, newTokens: NEW });
    });
  }

  it('runs phased generations of both agents at once on one executor, token-exact', async () => {
    await follow('dev', 'CCCCCC', 'CSSSSC');
    await follow('dev-replay', 'SSSSSS', 'CSSSSC');
    const before = await executorStatus(execClient);
    const rs = await Promise.all([run('dev'), run('dev-replay'), run('dev'), run('dev-replay')]);
    for (const r of rs) expect(r.stats.ids).toEqual(expected);
    const after = await executorStatus(execClient);
    expect(after.sessionsOpened - before.sessionsOpened).toBe(4);
  });

  it('on a private device moves only middle stages (its session is private), and refuses a decode placement that would send its ends', async () => {
    const e = await follow('dev-private', 'CSSSSC', 'CCCSSC');
    const r = await run('dev-private');
    expect(r.stats.ids).toEqual(expected);
    expect(r).toMatchObject({ decodePlacement: 'CCCSSC', epoch: e });
    expect(r.stats.kvDownBytes).toBeGreaterThan(0);
    const agent = agents.get('dev-private')!;
    const problems = new Map([
      [++epoch, 'classes[0].decodePlacement puts stage 0 (token ids in) on the server, which AGENT_PRIVATE forbids'],
      [++epoch, 'classes[0].decodePlacement puts stage 5 (tokens out) on the server, which AGENT_PRIVATE forbids'],
    ]);
    const [first, second] = [...problems.keys()];
    planner.push(planOf('dev-private', first, 'CSSSSC', 'SSSSSC'));
    planner.push(planOf('dev-private', second, 'CCSSSC', 'CCSSSS'));
    const refusals = await eventually(
      () => {
        const got = privateLog.lines().filter((l) => l.msg === 'refused a plan');
        return got.length === 2 ? got : undefined;
      },
      { what: 'both plans refused' },
    );
    expect(refusals.map((l) => [l.epoch, l.problem])).toEqual([...problems]);
    // the refused plans leave the last good one in force
    expect(agent.status().planEpoch).toBe(e);
    const again = await run('dev-private');
    expect(again).toMatchObject({ placement: 'CSSSSC', decodePlacement: 'CCCSSC', epoch: e });
  });

  it("shows the decode placement in the agent's status, and a phased override over gRPC in the summary", async () => {
    const e = await follow('dev', 'CCSSSC', 'SSSSSS');
    const agent = agents.get('dev')!;
    expect(agent.status().classPlacements).toEqual([expect.objectContaining({ placement: 'CCSSSC', decodePlacement: 'SSSSSS', planEpoch: e })]);
    const client = new AgentServiceClient(agentAddrs.get('dev')!, ...creds.clientArgs());
    try {
      const req = { input: { $case: 'ids' as const, value: { ids: PROMPT } }, maxNewTokens: NEW };
      const phased = await generateVia(client, { ...req, placement: 'SSSSSS', decodePlacement: 'CSSCCC' });
      expect(phased.summary).toMatchObject({ ids: expected, placement: 'SSSSSS', decodePlacement: 'CSSCCC', requestClass: 'override', planEpoch: 0 });
      expect(phased.summary.handoverMs).toBeGreaterThan(0);
      const plain = await generateVia(client, { ...req, placement: 'CCSSSC', decodePlacement: 'CCSSSC' });
      expect(plain.summary.ids).toEqual(expected);
      expect(plain.summary.decodePlacement).toBeUndefined();
      expect(plain.summary.handoverMs).toBeUndefined();
    } finally {
      client.close();
    }
  });

  it("counts the hand-overs' bytes and times in the agents' metrics", async () => {
    const text = (await agents.get('dev')!.metrics.registry.metrics()).split('\n');
    const value = (name: string): number => Number(text.find((l) => l.startsWith(`${name} `))?.split(' ')[1]);
    // every phased generation of "dev" so far: the four pairs (3 attention stages up, 4 down), two concurrent ones (2 up each), one override (1 down)
    const kvBytes = 2 * 4 * PROMPT.length * 64;
    expect(value('tandem_agent_kv_handover_bytes_total{direction="up"}')).toBe((3 + 2 * 2) * kvBytes);
    expect(value('tandem_agent_kv_handover_bytes_total{direction="down"}')).toBe((4 + 1) * kvBytes);
    expect(value('tandem_agent_kv_handover_seconds_count')).toBe(4 + 2 + 1);
  });

  it('with the decode equal to the prefill (or absent), runs the plain generation and moves nothing', async () => {
    await follow('dev', 'CCSSSC', 'CCSSSC');
    const r = await run('dev');
    expect(r.stats.ids).toEqual(expected);
    expect(r.decodePlacement).toBeUndefined();
    expect([r.stats.handoverMs, r.stats.kvUpBytes, r.stats.kvDownBytes]).toEqual([0, 0, 0]);
  });
});
