import type { NatsConnection } from '@nats-io/transport-node';
import * as grpc from '@grpc/grpc-js';
import { SplitPipeline } from '@tandem/model';
import type { PlannerServer } from '@tandem/planner';
import {
  AgentServiceClient,
  channelOptions,
  ExecutorServiceClient,
  generateVia,
  HealthClient,
  ServingStatus,
  type ClientProfile,
  type GenerationOutcome,
  type ServerLoad,
} from '@tandem/protocol';
import { OnnxStageEngine, type ExecutorServer } from '@tandem/server-executor';
import type { ClientAgent } from '@tandem/client-agent';
import {
  capturingLogger,
  clientProfile,
  generationOutcome,
  makeTempModel,
  sameStageTimes,
  serverLoad,
  withTimeout,
  type LogLine,
  type NatsServerHandle,
  type TempModel,
} from '@tandem/testkit';
import { makeCredentials, type TestCredentials } from './credentials';
import { allStages, planMaker, startAgent, startExecutor, startPlanner } from './stack';

// The services the bad-input corpora and the fuzz test run against (e2e/test/CORPUS.md): a
// real nats-server, executor, planner and agent on 127.0.0.1 port 0, the tiny model, and a
// healthy generation to run beside each bad input (its tokens compared with a one-process run).
// Every port serves mTLS with bearer tokens and nats-server has one user per service
// (e2e/test/credentials.ts); the test's own calls carry the client certificate and the operator
// token, so what each case meets is the check it is about, behind the ones a deployment has.

export const KIB = 1024;
export const HEALTHY_PROMPT = [464, 2068, 7586, 21831];
export const HEALTHY_TOKENS = 4;
/** A split that crosses the network at every switch, both ways. */
export const HEALTHY_PLACEMENT = 'CCSSSC';

/** A status a call ended with. */
export interface Outcome {
  code: grpc.status;
  details: string;
}

/** The services, their addresses, and what each refused (the warn lines they logged). */
export interface Stack {
  creds: TestCredentials;
  model: TempModel;
  nats: NatsServerHandle;
  /** A connection as the test's own NATS user (TAP_USER), which may publish on every telemetry subject. */
  tap: NatsConnection;
  executor: ExecutorServer;
  planner: PlannerServer;
  agent: ClientAgent;
  stageCount: number;
  modelId: string;
  addr: { executor: string; planner: string; agent: string };
  exec: ExecutorServiceClient;
  agentClient: AgentServiceClient;
  raw: { executor: grpc.Client; planner: grpc.Client; agent: grpc.Client };
  /** The tokens a one-process run gives for the healthy generation. */
  expected: number[];
  /** JSON log lines at warn and above of every service. */
  logLines(): LogLine[];
  /** One healthy split generation through the agent (and so the executor); resolves with its tokens. */
  healthy(): Promise<number[]>;
  /** Runs `bad` beside a healthy generation; fails unless the healthy one gives the one-process tokens. */
  beside<T>(bad: () => Promise<T>): Promise<T>;
  /** Whether the planner, executor and agent all answer health SERVING. */
  serving(): Promise<boolean>;
  stop(): Promise<void>;
}

export async function startStack(opts: { maxContextTokens?: number } = {}): Promise<Stack> {
  const creds = makeCredentials({ agents: ['dev-1'], executors: ['exec'] });
  const model = await makeTempModel();
  const nats = await creds.startNats();
  const { log, lines } = capturingLogger('warn');
  const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
  const { stageCount, modelId } = engine;
  const d = { log, creds, natsUrl: nats.url, telemetryIntervalMs: 200 };
  const { server: executor, addr: executorAddr } = await startExecutor(engine, d, {
    maxSessions: 64,
    maxContextTokens: opts.maxContextTokens ?? 64,
    idleTimeoutMs: 10_000,
  });
  const { server: planner, addr: plannerAddr } = await startPlanner(planMaker(stageCount, { expectedNewTokens: 4 }), modelId, d, { debounceMs: 5 });
  const { server: agent, addr: agentAddr } = await startAgent(
    { modelDir: model.dir, modelId, clientId: 'dev-1', stages: allStages(stageCount), executorAddr },
    d,
    {
      plannerAddr,
      deadlineMs: 20_000,
    },
  );
  // The client certificate and the operator token: the corpus opens sessions and plan streams under several ids.
  const exec = new ExecutorServiceClient(executorAddr, ...creds.clientArgs(undefined, channelOptions(8 << 20)));
  const agentClient = new AgentServiceClient(agentAddr, ...creds.clientArgs());
  const raw = {
    executor: new grpc.Client(executorAddr, ...creds.clientArgs()),
    planner: new grpc.Client(plannerAddr, ...creds.clientArgs()),
    agent: new grpc.Client(agentAddr, ...creds.clientArgs()),
  };
  // Health is open to any caller that completes the handshake (no token).
  const health = [executorAddr, plannerAddr, agentAddr].map((a) => new HealthClient(a, creds.clientSecurity().credentials));
  const pipe = await SplitPipeline.load(model.dir, 'S'.repeat(stageCount));
  const expected = await pipe.generate(HEALTHY_PROMPT, { maxNewTokens: HEALTHY_TOKENS }).finally(() => pipe.close());
  const tap = await creds.connectNats(nats.url);

  const healthy = async (): Promise<number[]> =>
    (
      await withTimeout(
        generateVia(
          agentClient,
          { input: { $case: 'ids', value: { ids: HEALTHY_PROMPT } }, maxNewTokens: HEALTHY_TOKENS, placement: HEALTHY_PLACEMENT },
          20_000,
        ),
        25_000,
        'the healthy generation',
      )
    ).ids;

  return {
    creds,
    model,
    nats,
    tap,
    executor,
    planner,
    agent,
    stageCount,
    modelId,
    expected,
    exec,
    agentClient,
    raw,
    addr: { executor: executorAddr, planner: plannerAddr, agent: agentAddr },
    logLines: lines,
    healthy,
    async beside<T>(bad: () => Promise<T>): Promise<T> {
      const ok = healthy();
      ok.catch(() => undefined);
      const out = await bad();
      expect(await ok).toEqual(expected);
      return out;
    },
    async serving() {
      const st = await Promise.all(
        health.map(
          (h) =>
            new Promise<ServingStatus | undefined>((resolve) =>
              h.check({ service: '' }, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (e, r) => resolve(e ? undefined : r.status)),
            ),
        ),
      );
      return st.every((s) => s === ServingStatus.SERVING);
    },
    async stop() {
      for (const h of health) h.close();
      for (const c of [exec, agentClient, raw.executor, raw.planner, raw.agent]) c.close();
      await tap.close();
      await agent.stop({ graceMs: 100 });
      await planner.stop();
      await executor.stop({ graceMs: 100 });
      await nats.stop();
      model.remove();
      creds.remove();
    },
  };
}

/** Starts a Stack before the tests of the describe block that calls it (60 s allowed), hands it to `use`, and stops it after them. */
export function stackForSuite(use: (stack: Stack) => void): void {
  let stack: Stack | undefined;
  beforeAll(async () => {
    stack = await startStack();
    use(stack);
  }, 60_000);
  afterAll(() => stack?.stop());
}

// Telemetry for the stack's model, as a sender `id` would publish it.

/** A device running every stage in 1 ms, over links of 1 ms and 1000 bytes/ms. */
export const stackProfile = (stack: Stack, clientId: string): ClientProfile =>
  clientProfile({
    clientId,
    modelId: stack.modelId,
    stages: sameStageTimes(stack.stageCount, 1),
    uplink: { latencyMs: 1, bytesPerMs: 1000 },
    downlink: { latencyMs: 1, bytesPerMs: 1000 },
  });

/** A server at 10 % utilisation, running every stage in 0.1 ms, stretched by nothing. */
export const stackLoad = (stack: Stack, serverId: string): ServerLoad =>
  serverLoad({
    serverId,
    modelId: stack.modelId,
    utilisation: 0.1,
    decodeStretch: 1,
    promptStretch: 1,
    longPromptStretch: 1,
    stages: sameStageTimes(stack.stageCount, 0.1),
  });

/** A met generation on CCSSSC. */
export const stackOutcome = (stack: Stack, clientId: string): GenerationOutcome => generationOutcome({ clientId, modelId: stack.modelId });

const identity = (b: Buffer): Buffer => b;

/** A unary call of raw bytes; resolves with its status. */
export function rawUnary(client: grpc.Client, method: string, body: Buffer, deadlineMs = 10_000): Promise<Outcome> {
  return new Promise((resolve) => {
    client.makeUnaryRequest(method, identity, identity, body, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (e) =>
      resolve(e ? { code: e.code, details: e.details } : { code: grpc.status.OK, details: '' }),
    );
  });
}

/**
 * A server-streaming call of raw bytes; resolves with its status. With `openOkAfterMs`, a stream
 * still open then (a plan stream) counts as OK and is cancelled.
 */
export function rawServerStream(client: grpc.Client, method: string, body: Buffer, deadlineMs = 20_000, openOkAfterMs?: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const call = client.makeServerStreamRequest(method, identity, identity, body, new grpc.Metadata(), { deadline: Date.now() + deadlineMs });
    let t: NodeJS.Timeout | undefined;
    let done = false;
    const finish = (o: Outcome): void => {
      if (done) return;
      done = true;
      if (t) clearTimeout(t);
      resolve(o);
    };
    if (openOkAfterMs !== undefined)
      t = setTimeout(() => {
        finish({ code: grpc.status.OK, details: '' });
        call.cancel();
      }, openOkAfterMs);
    call.on('data', () => undefined);
    call.on('error', (e: grpc.ServiceError) => finish({ code: e.code, details: e.details }));
    call.on('status', (s: grpc.StatusObject) => {
      if (s.code === grpc.status.OK) finish({ code: s.code, details: s.details });
    });
  });
}

/** A Session stream: writes each raw message, half-closes, and resolves with the final status. */
export function rawSession(client: grpc.Client, messages: readonly Buffer[], deadlineMs = 20_000): Promise<Outcome> {
  return new Promise((resolve) => {
    const call = client.makeBidiStreamRequest('/tandem.executor.v1.ExecutorService/Session', identity, identity, new grpc.Metadata(), {
      deadline: Date.now() + deadlineMs,
    });
    let done = false;
    const finish = (o: Outcome): void => {
      if (!done) {
        done = true;
        resolve(o);
      }
    };
    call.on('data', () => undefined);
    call.on('error', (e: grpc.ServiceError) => finish({ code: e.code, details: e.details }));
    call.on('status', (s: grpc.StatusObject) => {
      if (s.code === grpc.status.OK) finish({ code: s.code, details: s.details });
    });
    for (const m of messages) call.write(m);
    call.end();
  });
}
