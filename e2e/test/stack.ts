import * as grpc from '@grpc/grpc-js';
import { ClientAgent, LinkEmulator, type ClientAgentOptions } from '@tandem/client-agent';
import { PlanMaker, PlannerServer, type PlannerServerOptions, type RequestClass } from '@tandem/planner';
import {
  AgentServiceClient,
  GenerationOutcome,
  PlannerServiceService,
  Subjects,
  type ClassPlacement,
  type ClientPlan,
  type PlannerServiceServer,
  type WatchPlansRequest,
  type WatchPlansResponse,
} from '@tandem/protocol';
import { ExecutorServer, OnnxStageEngine, type ExecutorServerOptions, type StageEngine } from '@tandem/server-executor';
import { bindServer, serverAuthOptions, type Logger } from '@tandem/service-kit';
import { classPlacement, EXECUTOR_SETTINGS, makeTempModel, PLAN_SETTINGS, PLANNER_SETTINGS, type NatsServerHandle, type TempModel } from '@tandem/testkit';
import type { TestCredentials } from './credentials';

// The services of the end-to-end tests, started in this process as deployed (e2e/test/credentials.ts):
// every gRPC port serves mTLS with bearer tokens, and with a nats-server each service connects as
// its own NATS user. A test states only what its scenario is about.

/** Largest gRPC message of the services and the tests' clients. */
export const MAX_MESSAGE_BYTES = 8 << 20;

/** What the services of one test share: its logger, its credentials, its nats-server (none: no NATS) and how often they publish telemetry. */
export interface Deployment {
  readonly log: Logger;
  readonly creds: TestCredentials;
  readonly natsUrl?: string;
  readonly telemetryIntervalMs: number;
}

/** A service started on 127.0.0.1 port 0: the port it was given, and host:port. */
export interface Started<T> {
  readonly server: T;
  readonly port: number;
  readonly addr: string;
}

/** `server` started: where it listens. */
async function started<T extends { start(): Promise<{ port: number }> }>(server: T): Promise<Started<T>> {
  const { port } = await server.start();
  return { server, port, addr: `127.0.0.1:${port}` };
}

/** Stages 0 to count - 1: a device holding the whole model. */
export const allStages = (count: number): number[] => Array.from({ length: count }, (_, i) => i);

/** The NATS URL of `d` and the credentials of its user `id`, or nothing when `d` has no nats-server. */
const natsOf = (d: Deployment, id: string): { natsUrl?: string; natsAuth?: ReturnType<TestCredentials['natsAuth']> } =>
  d.natsUrl === undefined ? {} : { natsUrl: d.natsUrl, natsAuth: d.creds.natsAuth(id) };

/**
 * Starts executor 'exec' on `engine`: 16 sessions, the model's full context, batching (8 per
 * batch), a 30 s idle timeout; with `over` on top.
 */
export async function startExecutor(engine: StageEngine, d: Deployment, over: Partial<ExecutorServerOptions> = {}): Promise<Started<ExecutorServer>> {
  const server = new ExecutorServer({
    engine,
    log: d.log,
    ...EXECUTOR_SETTINGS,
    serverId: 'exec',
    telemetryIntervalMs: d.telemetryIntervalMs,
    security: d.creds.serverSecurity(),
    ...natsOf(d, 'exec'),
    ...over,
  });
  return started(server);
}

/**
 * A DP planner of one request class, `short` (prompts up to 16 tokens, SLA 10 s unless `cls`
 * says otherwise), over `stageCount` stages moving 8 bytes a token into the first and 256 into
 * each other.
 */
export function planMaker(stageCount: number, cls: Partial<RequestClass> & { expectedNewTokens: number }): PlanMaker {
  return new PlanMaker({
    stages: allStages(stageCount).map((i) => ({ name: `s${i}`, inBytesPerToken: i === 0 ? 8 : 256 })),
    classes: [{ name: 'short', maxPromptTokens: 16, slaMs: 10_000, ...cls }],
    ...PLAN_SETTINGS,
  });
}

/** Starts the planner of model `modelId` with `maker` (clients kept 60 s, work minimised at any load), as NATS user 'planner'; with `over` on top. */
export async function startPlanner(
  maker: PlanMaker,
  modelId: string,
  d: Deployment & { natsUrl: string },
  over: Partial<PlannerServerOptions> = {},
): Promise<Started<PlannerServer>> {
  const server = new PlannerServer({
    maker,
    log: d.log,
    ...PLANNER_SETTINGS,
    modelId,
    debounceMs: 20,
    security: d.creds.serverSecurity(),
    natsUrl: d.natsUrl,
    natsAuth: d.creds.natsAuth('planner'),
    ...over,
  });
  return started(server);
}

/**
 * Plan `epoch` of `clientId` by 'dp': one class, 'all', covering every prompt (up to 64 tokens,
 * SLA 10 s; 100 ms, work 1, TTFT 20 ms and TPOT 10 ms predicted) placed by `cls`; `plan` on top.
 */
export function oneClassPlan(
  clientId: string,
  epoch: number,
  cls: Pick<ClassPlacement, 'expectedNewTokens' | 'placement'> & Partial<ClassPlacement>,
  plan: Partial<ClientPlan> = {},
): ClientPlan {
  const all = classPlacement({
    name: 'all',
    maxPromptTokens: 64,
    slaMs: 10_000,
    predictedLatencyMs: 100,
    predictedServerWork: 1,
    predictedTtftMs: 20,
    predictedTpotMs: 10,
    ...cls,
  });
  return { clientId, epoch, algorithm: 'dp', createdUnixMs: epoch, classes: [all], alternates: [], ...plan };
}

/** A planner stand-in on 127.0.0.1 port 0: push(plan) hands it to its client's WatchPlans streams, and to each such stream opened later. */
export interface StubPlanner {
  readonly addr: string;
  push(plan: ClientPlan): void;
  stop(): void;
}

/** Starts a StubPlanner serving with `creds` as the services do (mTLS, bearer tokens); its ListPlans lists nothing. */
export async function stubPlanner(creds: TestCredentials): Promise<StubPlanner> {
  const sec = creds.serverSecurity();
  const server = new grpc.Server(serverAuthOptions(sec.tokens));
  const latest = new Map<string, ClientPlan>();
  const calls = new Set<grpc.ServerWritableStream<WatchPlansRequest, WatchPlansResponse>>();
  const impl: PlannerServiceServer = {
    watchPlans: (call) => {
      calls.add(call);
      call.on('cancelled', () => calls.delete(call));
      const p = latest.get(call.request.clientId);
      if (p) call.write({ plan: p, noPlanReason: '' });
    },
    listPlans: (_call, cb) => cb(null, { plans: [], observations: [], nextPageToken: '', executors: [] }),
  };
  server.addService(PlannerServiceService, impl);
  const port = await bindServer(server, '127.0.0.1:0', sec.credentials);
  return {
    addr: `127.0.0.1:${port}`,
    push: (p) => {
      latest.set(p.clientId, p);
      for (const c of calls) if (c.request.clientId === p.clientId) c.write({ plan: p, noPlanReason: '' });
    },
    stop: () => server.forceShutdown(),
  };
}

/** What an agent must be told: its model, its id, its stages and its executor. */
export type AgentBasics = Pick<ClientAgentOptions, 'modelDir' | 'modelId' | 'clientId' | 'stages' | 'executorAddr'>;

/**
 * Starts agent `clientId` of class 'default' (one thread, no slow-down, an instant link, a 30 s
 * deadline), calling upstream with its own client certificate and token and publishing as its
 * NATS user; with `over` on top.
 */
export async function startAgent(basics: AgentBasics, d: Deployment, over: Partial<ClientAgentOptions> = {}): Promise<Started<ClientAgent>> {
  const server = new ClientAgent({
    clientClass: 'default',
    address: '127.0.0.1:0',
    threads: 1,
    slowdown: 1,
    link: new LinkEmulator({ latencyMs: 0, bytesPerMs: 0 }, { latencyMs: 0, bytesPerMs: 0 }),
    telemetryIntervalMs: d.telemetryIntervalMs,
    deadlineMs: 30_000,
    maxMessageBytes: MAX_MESSAGE_BYTES,
    log: d.log,
    security: d.creds.serverSecurity(),
    upstream: d.creds.clientSecurity(basics.clientId),
    ...natsOf(d, basics.clientId),
    ...basics,
    ...over,
  });
  return started(server);
}

/** The agents a test starts as it goes, each with a client calling as the operator; stopStack({ ...fleet, ... }) stops them with the rest. */
export class AgentFleet {
  readonly agents: ClientAgent[] = [];
  readonly clients: AgentServiceClient[] = [];

  /** Starts an agent as startAgent does, and a client of it. */
  async start(basics: AgentBasics, d: Deployment, over: Partial<ClientAgentOptions> = {}): Promise<{ agent: ClientAgent; client: AgentServiceClient }> {
    const { server: agent, addr } = await startAgent(basics, d, over);
    this.agents.push(agent);
    const client = new AgentServiceClient(addr, ...d.creds.clientArgs());
    this.clients.push(client);
    return { agent, client };
  }
}

/** What a test started, any of it possibly not (a failed beforeAll): stopped in the order that drains cleanly. */
export interface StackParts {
  readonly clients?: readonly ({ close(): void } | undefined)[];
  readonly agents?: readonly ({ stop(o: { graceMs: number }): Promise<unknown> } | undefined)[];
  readonly planner?: { stop(): Promise<unknown> };
  readonly executor?: { stop(o: { graceMs: number }): Promise<unknown> };
  readonly nats?: { stop(): Promise<unknown> };
  readonly model?: { remove(): void };
}

/** Closes the clients, stops the agents, the planner, the executor and nats-server, and removes the model. */
export async function stopStack(p: StackParts): Promise<void> {
  for (const c of p.clients ?? []) c?.close();
  for (const a of p.agents ?? []) await a?.stop({ graceMs: 100 });
  await p.planner?.stop();
  await p.executor?.stop({ graceMs: 100 });
  await p.nats?.stop();
  p.model?.remove();
}

/** What startOneDevice is told: the device, the planner's one request class, and what a test sets on each service. */
export interface OneDeviceOptions {
  /** The agent's id: it holds every stage. */
  readonly clientId: string;
  /** The planner's class 'short' (planMaker). */
  readonly cls: Partial<RequestClass> & { expectedNewTokens: number };
  /** The identity whose token the test's agent client sends: the operator's when omitted. */
  readonly caller?: string;
  /** false: the executor publishes no telemetry (no NATS URL), so the planner never hears its load. */
  readonly executorTelemetry?: boolean;
  readonly executor?: Partial<ExecutorServerOptions>;
  readonly planner?: Partial<PlannerServerOptions>;
  readonly agent?: Partial<ClientAgentOptions>;
}

/** One device's stack as deployed, started by startOneDevice. */
export interface OneDevice {
  readonly model: TempModel;
  readonly nats: NatsServerHandle;
  readonly modelId: string;
  readonly stageCount: number;
  readonly executor: ExecutorServer;
  readonly planner: PlannerServer;
  readonly agent: ClientAgent;
  /** host:port of each service. */
  readonly addrs: { readonly executor: string; readonly planner: string; readonly agent: string };
  /** A client of the agent's gRPC API (OneDeviceOptions.caller). */
  readonly client: AgentServiceClient;
  /** Stops it all (stopStack). */
  stop(): Promise<void>;
}

/**
 * Starts a temporary model, a nats-server of `creds`, executor 'exec' on the model (one thread),
 * a planner of one class and agent `clientId` on it, every service publishing telemetry every
 * 100 ms; and a client of the agent. What started is stopped again when a later part fails.
 */
export async function startOneDevice(log: Logger, creds: TestCredentials, o: OneDeviceOptions): Promise<OneDevice> {
  const parts: { -readonly [K in keyof StackParts]: StackParts[K] } = {};
  const stop = (): Promise<void> => stopStack(parts);
  try {
    const model = await makeTempModel();
    parts.model = model;
    const nats = await creds.startNats();
    parts.nats = nats;
    const d: Deployment & { natsUrl: string } = { log, creds, natsUrl: nats.url, telemetryIntervalMs: 100 };
    const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    const executor = await startExecutor(engine, o.executorTelemetry === false ? { ...d, natsUrl: undefined } : d, o.executor);
    parts.executor = executor.server;
    const planner = await startPlanner(planMaker(engine.stageCount, o.cls), engine.modelId, d, o.planner);
    parts.planner = planner.server;
    const basics = { modelDir: model.dir, modelId: engine.modelId, clientId: o.clientId, stages: allStages(engine.stageCount), executorAddr: executor.addr };
    const agent = await startAgent(basics, d, { plannerAddr: planner.addr, ...o.agent });
    parts.agents = [agent.server];
    const client = new AgentServiceClient(agent.addr, ...creds.clientArgs(o.caller));
    parts.clients = [client];
    return {
      model,
      nats,
      modelId: engine.modelId,
      stageCount: engine.stageCount,
      executor: executor.server,
      planner: planner.server,
      agent: agent.server,
      addrs: { executor: executor.addr, planner: planner.addr, agent: agent.addr },
      client,
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** The generation outcomes published on a nats-server, as the test reads them (watchOutcomes). */
export interface OutcomeWatch {
  /** Every outcome seen so far, decoded, with its subject, in the order they came. */
  readonly seen: readonly { readonly subject: string; readonly o: GenerationOutcome }[];
  /** Ends the subscription and closes the connection. */
  stop(): Promise<void>;
}

/** Subscribes to every agent's outcomes on the nats-server at `natsUrl` as the test's own NATS user; resolves once nats-server has the subscription. */
export async function watchOutcomes(creds: TestCredentials, natsUrl: string): Promise<OutcomeWatch> {
  const nc = await creds.connectNats(natsUrl);
  const sub = nc.subscribe(Subjects.allOutcomes);
  const seen: { subject: string; o: GenerationOutcome }[] = [];
  void (async () => {
    for await (const m of sub) seen.push({ subject: m.subject, o: GenerationOutcome.decode(m.data) });
  })();
  await nc.flush();
  return {
    seen,
    stop: async () => {
      await sub.drain();
      await nc.close();
    },
  };
}
