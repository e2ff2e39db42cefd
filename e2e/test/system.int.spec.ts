import { execFile } from 'node:child_process';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { SplitPipeline } from '@tandem/model';
import { OnnxStageEngine, type ExecutorServer } from '@tandem/server-executor';
import type { PlannerServer } from '@tandem/planner';
import {
  agentStatus,
  AgentServiceClient,
  ClientProfile,
  ExecutorServiceClient,
  executorStatus,
  generateVia,
  listPlansPage,
  PlannerServiceClient,
  Subjects,
  type ClientPlan,
  type GenerateRequest,
  type GenerationResult,
  type WatchPlansResponse,
} from '@tandem/protocol';
import { clientOptions, createLogger, loadClientSecurity } from '@tandem/service-kit';
import { eventually, makeTempModel, type NatsServerHandle, type TempModel } from '@tandem/testkit';
import type { ClientAgent } from '@tandem/client-agent';
import { makeCredentials, type TestCredentials } from './credentials';
import { allStages, planMaker, startAgent, startExecutor, startPlanner as startDeployedPlanner, stopStack, type Deployment } from './stack';

// The three services in this process as deployed (e2e/test/credentials.ts): TLS with client
// certificates on every gRPC port, bearer tokens with identities, and a nats-server with one
// user per service.

const log = createLogger({ name: 'test', level: 'silent' });

/** Runs a command to completion (bounded), capturing its output. */
function run(cmd: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 60_000 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') {
        reject(err);
        return;
      }
      resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
    });
  });
}
const PROMPT = [15496, 11, 995, 318];

/** Runs one generation of PROMPT through an agent's gRPC API; resolves with the streamed ids and the summary. */
const generate = (client: AgentServiceClient, req: Partial<GenerateRequest>): Promise<GenerationResult> =>
  generateVia(client, { input: { $case: 'ids', value: { ids: PROMPT } }, maxNewTokens: 6, placement: '', ...req });

describe('the three services end to end', () => {
  let creds: TestCredentials;
  let model: TempModel;
  let nats: NatsServerHandle;
  let executor: ExecutorServer;
  let executorAddr: string;
  let planner: PlannerServer;
  let plannerAddr: string;
  let agent: ClientAgent;
  let agentClient: AgentServiceClient;
  let agentPort: number;
  let execClient: ExecutorServiceClient;
  let nc: NatsConnection;
  let stageCount: number;
  let modelId: string;

  /** The services' shared setting: this test's credentials and nats-server, telemetry every 100 ms. */
  const deployment = (): Deployment & { natsUrl: string } => ({ log, creds, natsUrl: nats.url, telemetryIntervalMs: 100 });

  async function startPlanner(address = '127.0.0.1:0'): Promise<void> {
    ({ server: planner, addr: plannerAddr } = await startDeployedPlanner(planMaker(stageCount, { expectedNewTokens: 6 }), modelId, deployment(), { address }));
  }

  beforeAll(async () => {
    creds = makeCredentials({ agents: ['dev-1'], executors: ['exec'] });
    model = await makeTempModel();
    nats = await creds.startNats();
    nc = await creds.connectNats(nats.url, { maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    stageCount = engine.stageCount;
    modelId = engine.modelId;
    ({ server: executor, addr: executorAddr } = await startExecutor(engine, deployment()));
    execClient = new ExecutorServiceClient(executorAddr, ...creds.clientArgs());
    await startPlanner();
    ({ server: agent, port: agentPort } = await startAgent(
      { modelDir: model.dir, modelId: engine.modelId, clientId: 'dev-1', stages: allStages(stageCount), executorAddr },
      deployment(),
      { plannerAddr },
    ));
    agentClient = new AgentServiceClient(`127.0.0.1:${agentPort}`, ...creds.clientArgs());
  });

  afterAll(async () => {
    await nc?.close();
    await stopStack({ clients: [agentClient, execClient], agents: [agent], planner, executor, nats, model });
    creds?.remove();
  });

  it('gives the same tokens through agent and executor as the one-process split for the same placement', async () => {
    for (const placement of ['CCSSSC', 'SSSSSS', 'SCSCSC']) {
      const pipe = await SplitPipeline.load(model.dir, placement);
      const expected = await pipe.generate(PROMPT, { maxNewTokens: 6 });
      await pipe.close();
      const { ids, summary } = await generate(agentClient, { placement });
      expect(ids).toEqual(expected);
      expect(summary.ids).toEqual(expected);
      expect(summary.placement).toBe(placement);
    }
  });

  it('refuses a client without the CA, without a client certificate or without a token, and NATS without credentials (TLS, mTLS, tokens and NATS users are on)', async () => {
    // The refused callers are plaintext or lack a credential on purpose: this test is about refusing them.
    const grpcCalls: [string, (creds: grpc.ChannelCredentials, opts: Partial<grpc.ClientOptions>) => Promise<unknown>][] = [
      [
        'executor GetStatus',
        (c, o) => {
          const x = new ExecutorServiceClient(executorAddr, c, o);
          return executorStatus(x, 5000).finally(() => x.close());
        },
      ],
      [
        'planner ListPlans',
        (c, o) => {
          const x = new PlannerServiceClient(plannerAddr, c, o);
          return listPlansPage(x, { pageSize: 0, pageToken: '' }, Date.now() + 5000).finally(() => x.close());
        },
      ],
      [
        'agent GetStatus',
        (c, o) => {
          const x = new AgentServiceClient(`127.0.0.1:${agentPort}`, c, o);
          return agentStatus(x, 5000).finally(() => x.close());
        },
      ],
    ];
    const noToken = { ...creds.clientSecurity(), token: undefined };
    const refusals: Record<string, string> = {};
    for (const [what, call] of grpcCalls) {
      const outcome = async (c: grpc.ChannelCredentials, o: Partial<grpc.ClientOptions> = {}): Promise<string> =>
        call(c, o).then(
          () => 'OK',
          (e: grpc.ServiceError) => `${grpc.status[e.code]}${e.code === grpc.status.UNAUTHENTICATED ? `: ${e.details.split(' (')[0]}` : ''}`,
        );
      refusals[what] = [
        // no CA: a plaintext client, and a TLS client that trusts only the public roots
        await outcome(grpc.credentials.createInsecure()),
        await outcome(grpc.credentials.createSsl()),
        // the CA but no client certificate: refused at the handshake (mTLS)
        await outcome(loadClientSecurity({ caFile: creds.certs.caCert }).credentials, clientOptions(creds.clientSecurity())),
        // the CA and a client certificate but no token
        await outcome(noToken.credentials, clientOptions(noToken)),
        // everything: served
        await outcome(...creds.clientArgs()),
      ].join(' | ');
    }
    const refused = "UNAVAILABLE | UNAVAILABLE | UNAVAILABLE | UNAUTHENTICATED: metadata 'authorization' must be 'Bearer <token>', given none | OK";
    expect(refusals).toEqual({ 'executor GetStatus': refused, 'planner ListPlans': refused, 'agent GetStatus': refused });
    // an agent's token acts for that agent only
    const devToken = creds.clientArgs('dev-1');
    const other = await new Promise<grpc.ServiceError | undefined>((resolve) => {
      const x = new ExecutorServiceClient(executorAddr, ...devToken);
      const s = x.session({ deadline: Date.now() + 5000 });
      s.on('data', () => undefined);
      s.on('error', (e: grpc.ServiceError) => {
        x.close();
        resolve(e);
      });
      s.on('end', () => {
        x.close();
        resolve(undefined);
      });
      s.write({ kind: { $case: 'open', value: { clientId: 'dev-2', planEpoch: '0', modelId: '' } } });
    });
    expect(other?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(other?.details).toContain('open.client_id');
    // nats-server refuses a connection without credentials
    const anonymous = await connect({ servers: nats.url, reconnect: false, timeout: 5000 }).then(
      async (c) => {
        await c.close();
        return 'connected';
      },
      (e: Error) => e.message,
    );
    expect(anonymous).toMatch(/authorization violation/i);
  });

  it('the agent gets a plan from its own telemetry and generates with it', async () => {
    const st = await eventually(
      async () => {
        const s = await agentStatus(agentClient);
        return s.planEpoch > 0 ? s : undefined;
      },
      { timeoutMs: 10_000, what: 'a plan for dev-1' },
    );
    const { summary } = await generate(agentClient, {});
    expect(summary.planEpoch).toBe(st.planEpoch);
    expect(summary.requestClass).toBe('short');
    expect(summary.placement).toHaveLength(stageCount);
  });

  it('pushes a new plan within 2 s of a client profile injected over NATS', async () => {
    const plans: ClientPlan[] = [];
    const pc = new PlannerServiceClient(plannerAddr, ...creds.clientArgs());
    const call = pc.watchPlans({ clientId: 'injected' });
    call.on('data', (m: WatchPlansResponse) => {
      if (m.plan) plans.push(m.plan);
    });
    call.on('error', () => undefined);
    try {
      const profile = (msPerStage: number): ClientProfile => ({
        clientId: 'injected',
        clientClass: 'default',
        modelId,
        unixMs: Date.now(),
        planEpoch: 0,
        stages: Array.from({ length: stageCount }, (_, stage) => ({ stage, prefillMsPerToken: msPerStage / 4, decodeMs: msPerStage, samples: 5 })),
        uplink: { latencyMs: 1, bytesPerMs: 10_000 },
        downlink: { latencyMs: 1, bytesPerMs: 10_000 },
      });
      let t0 = Date.now();
      nc.publish(Subjects.clientProfile('injected'), ClientProfile.encode(profile(1)).finish());
      await eventually(() => plans.length >= 1, { timeoutMs: 2000, what: 'first plan' });
      expect(Date.now() - t0).toBeLessThan(2000);
      expect(plans[0].classes[0].placement).toBe('C'.repeat(stageCount)); // a fast client takes everything
      // the same client becomes far too slow for its SLA: the plan moves work back to the server
      t0 = Date.now();
      nc.publish(Subjects.clientProfile('injected'), ClientProfile.encode(profile(5000)).finish());
      await eventually(() => plans.length >= 2, { timeoutMs: 2000, what: 'second plan' });
      expect(Date.now() - t0).toBeLessThan(2000);
      expect(plans[1].epoch).toBeGreaterThan(plans[0].epoch);
      expect(plans[1].classes[0].placement).toBe('S'.repeat(stageCount));
    } finally {
      call.cancel();
      pc.close();
    }
  });

  it('drops a malformed NATS message without disturbing the planner', async () => {
    const before = planner.counters.badMessages;
    nc.publish(Subjects.clientProfile('junk'), new Uint8Array([0xff, 0xff, 0xff, 0x07]));
    /** A profile of nothing measured, of model `modelId`. */
    const bare = (clientId: string, modelId: string): Uint8Array =>
      ClientProfile.encode({ clientId, clientClass: '', modelId, stages: [], unixMs: 0, planEpoch: 0, uplink: undefined, downlink: undefined }).finish();
    nc.publish(Subjects.clientProfile('junk'), bare('other', ''));
    // a device holding another model must not be planned with this model's costs
    nc.publish(Subjects.clientProfile('stranger'), bare('stranger', 'ffffffffffffffff'));
    await eventually(() => planner.counters.badMessages >= before + 3, { timeoutMs: 2000, what: 'bad messages counted' });
    expect(planner.plans().some((p) => p.clientId === 'stranger')).toBe(false);
    const { ids } = await generate(agentClient, {});
    expect(ids).toHaveLength(6);
  });

  it('frees the server session within 1 s when the caller cancels mid-generation', async () => {
    const call = agentClient.generate({ input: { $case: 'ids', value: { ids: PROMPT } }, maxNewTokens: 400, placement: 'S'.repeat(stageCount) });
    call.on('error', () => undefined);
    await new Promise<void>((resolve) => call.once('data', () => resolve()));
    expect((await executorStatus(execClient)).activeSessions).toBe(1);
    call.cancel();
    const t0 = Date.now();
    await eventually(async () => (await executorStatus(execClient)).activeSessions === 0, { timeoutMs: 1000, what: 'server session freed' });
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it('`tandem generate --agent` runs through the agent with the same tokens as in one process', async () => {
    const pipe = await SplitPipeline.load(model.dir, 'CSCSCS');
    const expected = await pipe.generate(PROMPT, { maxNewTokens: 5 });
    await pipe.close();
    const cli = join(__dirname, '../../tools/cli/bin/tandem.js');
    /** `tandem generate` of `ids`, 5 new tokens on `placement`, through the agent. */
    const generateCli = (ids: string, placement: string, ...more: string[]) =>
      run(process.execPath, [
        cli,
        'generate',
        '--agent',
        `127.0.0.1:${agentPort}`,
        '--ids',
        ids,
        '--max-new-tokens',
        '5',
        '--placement',
        placement,
        ...more,
        ...creds.cliFlags(),
      ]);
    const ok = await generateCli(PROMPT.join(','), 'CSCSCS', '--json');
    expect(ok.code).toBe(0);
    const out = JSON.parse(ok.stdout);
    expect(out.ids).toEqual(expected);
    expect(out.placement).toBe('CSCSCS');
    expect(out.totalMs).toBeGreaterThan(0);
    const bad = await generateCli('1,2', 'CS');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain(`placement must be ${stageCount} letters C or S, given 'CS'`);
  });

  it('refuses a bad Generate request with INVALID_ARGUMENT naming the field', async () => {
    const err = await generate(agentClient, { placement: 'CCX' }).then(
      () => undefined,
      (e: grpc.ServiceError) => e,
    );
    expect(err?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err?.details).toBe(`placement must be ${stageCount} letters C or S, given 'CCX'`);
    const err2 = await generate(agentClient, { input: { $case: 'ids', value: { ids: [1, 99999] } } }).then(
      () => undefined,
      (e: grpc.ServiceError) => e,
    );
    expect(err2?.details).toBe('ids[1] must be in 0..50256, given 99999');
  });

  it('resumes telemetry and plans after nats-server restarts, with no service restarted', async () => {
    await nats.restart();
    const profilesBefore = planner.counters.profiles;
    // the agent's own telemetry reaches the planner again
    await eventually(() => planner.counters.profiles > profilesBefore + 1, { timeoutMs: 10_000, what: 'profiles after the restart' });
    // and an injected profile yields a plan pushed on a stream
    const pc = new PlannerServiceClient(plannerAddr, ...creds.clientArgs());
    const plans: ClientPlan[] = [];
    const call = pc.watchPlans({ clientId: 'after-restart' });
    call.on('data', (m: WatchPlansResponse) => {
      if (m.plan) plans.push(m.plan);
    });
    call.on('error', () => undefined);
    try {
      await eventually(
        () => {
          nc.publish(
            Subjects.clientProfile('after-restart'),
            ClientProfile.encode({
              clientId: 'after-restart',
              clientClass: 'default',
              modelId,
              unixMs: Date.now(),
              planEpoch: 0,
              stages: Array.from({ length: stageCount }, (_, stage) => ({ stage, prefillMsPerToken: 0.1, decodeMs: 0.1, samples: 5 })),
              uplink: { latencyMs: 1, bytesPerMs: 10_000 },
              downlink: { latencyMs: 1, bytesPerMs: 10_000 },
            }).finish(),
          );
          return plans.length > 0;
        },
        { timeoutMs: 10_000, intervalMs: 200, what: 'a plan after the restart' },
      );
    } finally {
      call.cancel();
      pc.close();
    }
  });

  it('keeps generating on the last plan while the planner is down, and follows it again when it is back', async () => {
    const before = await agentStatus(agentClient);
    expect(before.planEpoch).toBeGreaterThan(0);
    const address = plannerAddr;
    await planner.stop();
    await eventually(async () => !(await agentStatus(agentClient)).plannerConnected, { timeoutMs: 5000, what: 'agent sees the planner gone' });
    const { ids, summary } = await generate(agentClient, {});
    expect(ids).toHaveLength(6);
    expect(summary.planEpoch).toBe(before.planEpoch);
    // a planner on the same address: the agent reconnects and gets a plan with a newer epoch
    await startPlanner(address);
    await eventually(async () => (await agentStatus(agentClient)).planEpoch > before.planEpoch, {
      timeoutMs: 10_000,
      what: 'a newer plan from the new planner',
    });
  });
});
