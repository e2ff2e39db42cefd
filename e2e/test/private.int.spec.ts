import * as grpc from '@grpc/grpc-js';
import type { ClientAgent } from '@tandem/client-agent';
import { SplitPipeline } from '@tandem/model';
import type { PlannerServer } from '@tandem/planner';
import { AgentServiceClient, generateVia, type GenerateRequest } from '@tandem/protocol';
import { OnnxStageEngine, type ExecutorServer } from '@tandem/server-executor';
import { createLogger } from '@tandem/service-kit';
import { eventually, makeTempModel, type NatsServerHandle, type TempModel } from '@tandem/testkit';
import { makeCredentials, type TestCredentials } from './credentials';
import { allStages, planMaker, startAgent, startExecutor, startPlanner, stopStack, type Deployment } from './stack';

// A private device (AGENT_PRIVATE): its token ids and text never reach the server. The services
// run as deployed (mTLS, tokens, a nats-server with one user per service).

const log = createLogger({ name: 'test', level: 'silent' });
const PROMPT = [15496, 11, 995, 318];

let creds: TestCredentials;
beforeAll(() => {
  creds = makeCredentials({ agents: ['dev-private'], executors: ['exec'] });
});
afterAll(() => creds?.remove());

describe('a private device end to end', () => {
  let model: TempModel;
  let nats: NatsServerHandle;
  let executor: ExecutorServer;
  let planner: PlannerServer;
  let agent: ClientAgent;
  let client: AgentServiceClient;
  let stageCount: number;

  const generate = (req: Partial<GenerateRequest>) =>
    generateVia(client, { input: { $case: 'ids', value: { ids: PROMPT } }, maxNewTokens: 5, placement: '', ...req });

  beforeAll(async () => {
    model = await makeTempModel();
    nats = await creds.startNats();
    const d: Deployment & { natsUrl: string } = { log, creds, natsUrl: nats.url, telemetryIntervalMs: 100 };
    const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    stageCount = engine.stageCount;
    let executorAddr: string;
    let plannerAddr: string;
    ({ server: executor, addr: executorAddr } = await startExecutor(engine, d));
    ({ server: planner, addr: plannerAddr } = await startPlanner(planMaker(stageCount, { expectedNewTokens: 5 }), engine.modelId, d));
    let addr: string;
    ({ server: agent, addr } = await startAgent(
      { modelDir: model.dir, modelId: engine.modelId, clientId: 'dev-private', stages: allStages(stageCount), executorAddr },
      d,
      { plannerAddr, private: true },
    ));
    client = new AgentServiceClient(addr, ...creds.clientArgs());
  });

  afterAll(() => stopStack({ clients: [client], agents: [agent], planner, executor, nats, model }));

  it('gets plans that keep its embedding and head, from its profile', async () => {
    const plan = await eventually(() => planner.plans().find((p) => p.clientId === 'dev-private'), { timeoutMs: 10_000, what: "the private device's plan" });
    for (const c of plan.classes) expect(c.placement).toMatch(/^C.*C$/);
  });

  it('runs the middle on the server in a private session, with the one-process tokens', async () => {
    const pipe = await SplitPipeline.load(model.dir, 'S'.repeat(stageCount));
    let want: number[];
    try {
      want = await pipe.generate(PROMPT, { maxNewTokens: 5 });
    } finally {
      await pipe.close();
    }
    const middle = `C${'S'.repeat(stageCount - 2)}C`;
    const before = executor.status().sessionsOpened;
    const r = await generate({ placement: middle });
    expect(r.summary.placement).toBe(middle);
    expect(r.tokens.map((t) => t.id)).toEqual(want);
    // It ran on the executor (in a session opened private, which refuses token ids).
    expect(executor.status().sessionsOpened).toBeGreaterThan(before);
  });

  it('refuses a request placement that would send its token ids or its tokens, naming the stage', async () => {
    await expect(generate({ placement: 'S'.repeat(stageCount) })).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: expect.stringContaining('placement puts stage 0 (token ids in) on the server, which AGENT_PRIVATE forbids'),
    });
    await expect(generate({ placement: `${'C'.repeat(stageCount - 1)}S` })).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: expect.stringContaining(`placement puts stage ${stageCount - 1} (tokens out) on the server`),
    });
  });
});
