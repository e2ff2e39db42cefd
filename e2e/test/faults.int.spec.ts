import * as grpc from '@grpc/grpc-js';
import type { NatsConnection } from '@nats-io/transport-node';
import { RemoteSession } from '@tandem/client-agent';
import { ServiceProcess, type AppName } from '@tandem/launcher';
import {
  agentStatus,
  AgentServiceClient,
  ExecutorServiceClient,
  executorStatus,
  HealthClient,
  ServingStatus,
  Subjects,
  type AgentStatusResponse,
  type GenerateRequest,
  type GenerateResponse,
  type GetStatusResponse,
} from '@tandem/protocol';
import { eventually, freePort, makeTempModel, TcpProxy, withTimeout, type NatsServerHandle, type TempModel } from '@tandem/testkit';
import { sleep } from '@tandem/util';
import { makeCredentials, type TestCredentials } from './credentials';

// Faults with the real services as child processes on 127.0.0.1 (executor, planner, agents,
// nats-server), each killed or restarted while generations run, or the link between an agent
// and the executor (a TCP proxy in this process) slowed down or blackholed. Every request is
// counted: it completes (token-identical to an undisturbed run) or ends with a clear status
// within its deadline; none hangs. The services run as deployed (e2e/test/credentials.ts): mTLS
// and bearer tokens on every gRPC port (the TCP proxy passes TLS through untouched), and a
// nats-server with one user per service, restarted with the same configuration.

/** One service as its own Node process (@tandem/launcher), with its JSON log lines (stdout), the last 1000. */
class Service extends ServiceProcess {
  constructor(
    app: AppName,
    env: Record<string, string>,
    readonly logs: { msg?: string; [k: string]: unknown }[] = [],
  ) {
    super({
      name: app,
      app,
      env: { LOG_LEVEL: 'warn', ...env },
      onLine: (line) => {
        try {
          if (logs.push(JSON.parse(line) as { msg?: string }) > 1000) logs.shift();
        } catch {
          /* not JSON */
        }
      },
    });
  }
}

interface Outcome {
  ids: number[];
  error?: grpc.ServiceError;
  ms: number;
  deadlineMs: number;
}

const PROMPT = [464, 2068, 7586, 21831, 18045];

/** One generation through the agent's API; calls `onToken` with each index as it streams. */
function generateVia(client: AgentServiceClient, req: Partial<GenerateRequest>, deadlineMs = 30_000, onToken?: (index: number) => void): Promise<Outcome> {
  const t0 = Date.now();
  return withTimeout(
    new Promise<Outcome>((res) => {
      const ids: number[] = [];
      const call = client.generate({ input: { $case: 'ids', value: { ids: PROMPT } }, maxNewTokens: 8, placement: '', ...req }, { deadline: t0 + deadlineMs });
      call.on('data', (m: GenerateResponse) => {
        if (m.kind?.$case !== 'token') return;
        ids.push(m.kind.value.id);
        onToken?.(m.kind.value.index);
      });
      call.on('error', (error: grpc.ServiceError) => res({ ids, error, ms: Date.now() - t0, deadlineMs }));
      call.on('end', () => res({ ids, ms: Date.now() - t0, deadlineMs }));
    }),
    deadlineMs + 5000,
    'a generation that hung past its deadline',
  );
}

/** Every request ended within its deadline, and each failure has a clear status (a code and a message). */
function expectAccounted(outcomes: readonly Outcome[]): void {
  for (const o of outcomes) {
    expect(o.ms).toBeLessThanOrEqual(o.deadlineMs + 200);
    if (o.error) {
      expect(o.error.code).not.toBe(grpc.status.UNKNOWN);
      expect(o.error.details.length).toBeGreaterThan(0);
    }
  }
}

/** Runs `workers` loops of generations until `stop` resolves; returns every outcome. */
async function underLoad(client: AgentServiceClient, workers: number, req: Partial<GenerateRequest>, during: () => Promise<void>): Promise<Outcome[]> {
  const outcomes: Outcome[] = [];
  let done = false;
  const loops = Array.from({ length: workers }, async () => {
    while (!done) outcomes.push(await generateVia(client, req, 15_000));
  });
  try {
    await during();
  } finally {
    done = true;
  }
  await Promise.all(loops);
  return outcomes;
}

describe('faults with real services as child processes', () => {
  let creds: TestCredentials;
  let model: TempModel;
  let nats: NatsServerHandle;
  let execPort: number;
  let plannerPort: number;
  let executor: Service;
  let planner: Service;
  let agent: Service;
  let client: AgentServiceClient;
  const extra: Service[] = [];

  const startExecutor = async (env: Record<string, string> = {}, port = execPort): Promise<Service> => {
    const s = new Service('server-executor', {
      MODEL_DIR: model.dir,
      EXECUTOR_ADDR: `127.0.0.1:${port}`,
      NATS_URL: nats.url,
      EXECUTOR_FUSED: 'false',
      EXECUTOR_THREADS: '1',
      TELEMETRY_INTERVAL_MS: '200',
      EXECUTOR_SHUTDOWN_GRACE_MS: '2000',
      ...creds.serverEnv(),
      ...creds.natsEnv('executor'),
      ...env,
    });
    await s.listening;
    return s;
  };
  const startPlanner = async (): Promise<Service> => {
    const s = new Service('planner', {
      MODEL_DIR: model.dir,
      PLANNER_ADDR: `127.0.0.1:${plannerPort}`,
      NATS_URL: nats.url,
      PLANNER_DEBOUNCE_MS: '20',
      ...creds.serverEnv(),
      ...creds.natsEnv('planner'),
    });
    await s.listening;
    return s;
  };
  const startAgent = async (id: string, env: Record<string, string> = {}): Promise<{ service: Service; client: AgentServiceClient }> => {
    const service = new Service('client-agent', {
      MODEL_DIR: model.dir,
      AGENT_ID: id,
      AGENT_ADDR: '127.0.0.1:0',
      EXECUTOR_ADDR: `127.0.0.1:${execPort}`,
      PLANNER_ADDR: `127.0.0.1:${plannerPort}`,
      NATS_URL: nats.url,
      TELEMETRY_INTERVAL_MS: '200',
      ...creds.serverEnv(),
      ...creds.upstreamEnv(id),
      ...creds.natsEnv(id),
      ...env,
    });
    const port = await service.listening;
    return { service, client: new AgentServiceClient(`127.0.0.1:${port}`, ...creds.clientArgs()) };
  };
  const statusOf = (c: AgentServiceClient): Promise<AgentStatusResponse> => agentStatus(c, 10_000);

  beforeAll(async () => {
    creds = makeCredentials({
      agents: ['dev-faults', 'dev-term', 'dev-slow', 'dev-blackhole', 'dev-blackhole-ka'],
      executors: ['executor'],
      clients: ['dev-after'],
    });
    model = await makeTempModel();
    nats = await creds.startNats();
    execPort = await freePort();
    plannerPort = await freePort();
    [executor, planner] = await Promise.all([startExecutor(), startPlanner()]);
    // A 5 ms one-way link makes every split token a round trip of 10 ms or more: long enough to kill something mid-generation.
    ({ service: agent, client } = await startAgent('dev-faults', { AGENT_LINK_LATENCY_MS: '5' }));
  }, 90_000);

  afterAll(async () => {
    client?.close();
    await Promise.all([agent, executor, planner, ...extra].map((s) => s?.kill()));
    await nats?.stop();
    model?.remove();
    creds?.remove();
  });

  it.each([
    ['a split generation', 'CCSSSC', 60],
    ['a server-decoded generation', 'SSSSSS', 300],
  ])(
    'resumes %s when the executor is killed mid-way and restarted on the same port, token-identical',
    async (_what, placement, maxNewTokens) => {
      const undisturbed = await generateVia(client, { placement, maxNewTokens });
      expect(undisturbed.error).toBeUndefined();
      expect(undisturbed.ids).toHaveLength(maxNewTokens);
      const before = (await statusOf(client)).resumedGenerations;

      let killed: Promise<void> | undefined;
      const disturbed = await generateVia(client, { placement, maxNewTokens }, 30_000, (index) => {
        if (index === 2 && !killed)
          killed = executor.kill('SIGKILL').then(async () => {
            executor = await startExecutor();
          });
      });
      await killed;
      expect(disturbed.error).toBeUndefined();
      expect(disturbed.ids).toEqual(undisturbed.ids);
      const st = await statusOf(client);
      expect(st.resumedGenerations).toBe(before + 1);
      expect(st.failures).toBe(0);
    },
    60_000,
  );

  it('ends a generation whose executor does not come back with UNAVAILABLE within its deadline', async () => {
    const deadlineMs = 3000;
    let killed: Promise<void> | undefined;
    const o = await generateVia(client, { placement: 'CCSSSC', maxNewTokens: 200 }, deadlineMs, (index) => {
      if (index === 2 && !killed) killed = executor.kill('SIGKILL');
    });
    await killed;
    expect(o.error?.code).toBe(grpc.status.UNAVAILABLE);
    expect(o.error?.details).toContain('could not be resumed within the deadline');
    expect(o.ms).toBeLessThan(deadlineMs);
    expect(o.ids.length).toBeGreaterThanOrEqual(3);
    // a new request meanwhile is refused at once, not held
    const late = await generateVia(client, { placement: 'CCSSSC', maxNewTokens: 4 }, 10_000);
    expect(late.error?.code).toBe(grpc.status.UNAVAILABLE);
    expect(late.ms).toBeLessThan(2000);
    executor = await startExecutor();
    await eventually(async () => !(await generateVia(client, { placement: 'CCSSSC', maxNewTokens: 2 })).error, {
      timeoutMs: 10_000,
      intervalMs: 200,
      what: 'the agent using the restarted executor',
    });
  }, 60_000);

  it('drains the executor on SIGTERM under load: generations finish in the grace or resume on its successor, token-identical; every one counted', async () => {
    // Undisturbed references (greedy: a shorter run's tokens are a prefix of a longer one's).
    const ref = {
      split: await generateVia(client, { placement: 'CCSSSC', maxNewTokens: 200 }, 60_000),
      server: await generateVia(client, { placement: 'SSSSSS', maxNewTokens: 300 }, 60_000),
    };
    expect(ref.split.error).toBeUndefined();
    expect(ref.server.error).toBeUndefined();
    const before = await statusOf(client);
    // Short ones end well within the 2 s grace; 200 split tokens take 2 s or more over the 5 ms link (a round trip per token), so the drain cuts them.
    const jobs = [
      ...[20, 20, 30].map((n) => ({ placement: 'CCSSSC', n, expected: ref.split.ids.slice(0, n) })),
      ...[200, 200, 200].map((n) => ({ placement: 'CCSSSC', n, expected: ref.split.ids })),
      ...[300, 300].map((n) => ({ placement: 'SSSSSS', n, expected: ref.server.ids })),
    ];
    let started = 0;
    const runs = jobs.map((j) =>
      generateVia(client, { placement: j.placement, maxNewTokens: j.n }, 60_000, (i) => {
        if (i === 0) started++;
      }),
    );
    await eventually(() => started === jobs.length, { timeoutMs: 10_000, intervalMs: 5, what: 'every generation under way' });
    const t0 = Date.now();
    await executor.stop(8000); // SIGTERM: drains for EXECUTOR_SHUTDOWN_GRACE_MS (2 s), then ends the rest with UNAVAILABLE
    const drainMs = Date.now() - t0;
    expect(executor.child.signalCode).toBeNull(); // it exited by itself, not by the SIGKILL
    executor = await startExecutor();
    const outcomes = await Promise.all(runs);
    const after = await statusOf(client);
    const counts = {
      total: outcomes.length,
      completed: outcomes.filter((o) => !o.error).length,
      failed: outcomes.filter((o) => o.error).length,
      resumed: after.resumedGenerations - before.resumedGenerations,
    };
    process.stderr.write(`executor SIGTERM under load: drained in ${drainMs} ms; ${JSON.stringify(counts)}; ms ${outcomes.map((o) => o.ms).join(' ')}\n`);
    expectAccounted(outcomes);
    expect(outcomes.map((o) => o.error?.details)).toEqual(jobs.map(() => undefined));
    outcomes.forEach((o, i) => expect(o.ids).toEqual(jobs[i].expected));
    // The long split ones cannot finish in the grace, so the drain cut at least those; how many
    // short ones finished inside it depends on the machine's load (all of them when idle).
    expect(counts.resumed).toBeGreaterThanOrEqual(3);
    expect(drainMs).toBeLessThan(2000 + 3000); // EXECUTOR_SHUTDOWN_GRACE_MS, then the cut and the exit
    expect(after.failures).toBe(before.failures);
  }, 150_000);

  it('keeps generations completing while the planner restarts', async () => {
    const outcomes = await underLoad(client, 3, { maxNewTokens: 8 }, async () => {
      await sleep(500);
      await planner.stop();
      await sleep(300);
      planner = await startPlanner();
      await eventually(async () => (await statusOf(client)).plannerConnected, { timeoutMs: 10_000, intervalMs: 100, what: 'the agent back on the planner' });
      await sleep(500);
    });
    expectAccounted(outcomes);
    expect(outcomes.length).toBeGreaterThan(3);
    expect(outcomes.filter((o) => o.error)).toEqual([]);
  }, 60_000);

  it('keeps generations completing while nats-server restarts, and telemetry resumes', async () => {
    let nc: NatsConnection | undefined;
    const seen = { profiles: 0, loads: 0 };
    const watch = async (): Promise<void> => {
      nc = await creds.connectNats(nats.url, { reconnect: false });
      nc.subscribe(Subjects.clientProfile('dev-faults'), {
        callback: () => {
          seen.profiles++;
        },
      });
      nc.subscribe(Subjects.allServerLoads, {
        callback: () => {
          seen.loads++;
        },
      });
    };
    try {
      const outcomes = await underLoad(client, 3, { maxNewTokens: 8 }, async () => {
        await sleep(500);
        await nats.restart();
        await watch();
        await eventually(() => seen.profiles >= 2 && seen.loads >= 2, {
          timeoutMs: 15_000,
          intervalMs: 100,
          what: 'agent and executor telemetry after the restart',
        });
      });
      expectAccounted(outcomes);
      expect(outcomes.length).toBeGreaterThan(3);
      expect(outcomes.filter((o) => o.error)).toEqual([]);
    } finally {
      await nc?.close();
    }
  }, 60_000);

  it('lets in-flight generations finish when the agent gets SIGTERM, ends the rest with UNAVAILABLE, and refuses new ones', async () => {
    const a = await startAgent('dev-term', { PLANNER_ADDR: 'off', AGENT_LINK_LATENCY_MS: '5', AGENT_SHUTDOWN_GRACE_MS: '1500' });
    extra.push(a.service);
    try {
      const short = await generateVia(a.client, { placement: 'CCSSSC', maxNewTokens: 20 });
      expect(short.error).toBeUndefined();
      let started = 0;
      const onStart = (i: number): void => {
        if (i === 0) started++;
      };
      const runs = [
        generateVia(a.client, { placement: 'CCSSSC', maxNewTokens: 20 }, 20_000, onStart),
        generateVia(a.client, { placement: 'CCSSSC', maxNewTokens: 20 }, 20_000, onStart),
        // far longer than the grace: ended by the shutdown
        generateVia(a.client, { placement: 'CCSSSC', maxNewTokens: 900 }, 20_000, onStart),
      ];
      await eventually(() => started === 3, { timeoutMs: 10_000, intervalMs: 10, what: 'three generations under way' });
      a.service.child.kill('SIGTERM');
      const health = new HealthClient(a.client.getChannel().getTarget().replace(/^dns:/, ''), creds.clientSecurity().credentials);
      await eventually(() => new Promise<boolean>((res) => health.check({ service: '' }, (e, r) => res(!e && r.status === ServingStatus.NOT_SERVING))), {
        timeoutMs: 5000,
        intervalMs: 10,
        what: 'the agent draining',
      }).finally(() => health.close());
      const refused = await generateVia(a.client, { placement: 'CCSSSC', maxNewTokens: 2 }, 5000);
      expect(refused.error?.code).toBe(grpc.status.UNAVAILABLE);
      const [one, two, long] = await Promise.all(runs);
      expectAccounted([one, two, long, refused]);
      expect(one.error).toBeUndefined();
      expect(one.ids).toEqual(short.ids);
      expect(two.ids).toEqual(short.ids);
      expect(long.error?.code).toBe(grpc.status.UNAVAILABLE);
      expect(long.error?.details).toContain('shutting down');
      await withTimeout(a.service.exited, 10_000, 'the agent exiting after its grace');
      expect(a.service.child.exitCode).toBe(0);
    } finally {
      a.client.close();
    }
  }, 60_000);

  describe('with a TCP proxy between an agent and an executor of its own', () => {
    /** The executor's GRPC_KEEPALIVE_TIME_MS and GRPC_KEEPALIVE_TIMEOUT_MS: a client that stops answering its pings is dropped within their sum. */
    const KEEPALIVE = { timeMs: 500, timeoutMs: 500 };
    /** The executor's EXECUTOR_IDLE_TIMEOUT_MS: longer than its keepalive, so what frees a blackholed session is the keepalive. */
    const IDLE_MS = 5000;
    /** Scheduling slack on a shared, loaded core, ms. */
    const SLACK_MS = 1500;
    const keepaliveEnv = (k: { timeMs: number; timeoutMs: number }): Record<string, string> => ({
      GRPC_KEEPALIVE_TIME_MS: String(k.timeMs),
      GRPC_KEEPALIVE_TIMEOUT_MS: String(k.timeoutMs),
    });
    let port: number;
    let proxied: Service;
    let execClient: ExecutorServiceClient;
    const execStatus = (): Promise<GetStatusResponse> => executorStatus(execClient, 10_000);

    beforeAll(async () => {
      port = await freePort();
      // No telemetry: the planner sees only the executor the other tests use. LOG_LEVEL info: it logs generations cut short.
      proxied = await startExecutor({ EXECUTOR_IDLE_TIMEOUT_MS: String(IDLE_MS), ...keepaliveEnv(KEEPALIVE), NATS_URL: 'off', LOG_LEVEL: 'info' }, port);
      extra.push(proxied);
      execClient = new ExecutorServiceClient(`127.0.0.1:${port}`, ...creds.clientArgs('dev-after'));
    }, 60_000);

    afterAll(() => execClient?.close());

    /**
     * Runs `fn` with a proxy to this executor and an agent `id` (`env` on top) that reaches the
     * executor only through it (no emulated link: the proxy is the link); then closes the
     * client, kills the agent and closes the proxy.
     */
    const withAgentBehindProxy = async (
      id: string,
      env: Record<string, string>,
      fn: (a: { proxy: TcpProxy; client: AgentServiceClient }) => Promise<void>,
    ): Promise<void> => {
      const proxy = await TcpProxy.start(`127.0.0.1:${port}`);
      const { service, client } = await startAgent(id, { EXECUTOR_ADDR: proxy.address, PLANNER_ADDR: 'off', ...env });
      extra.push(service);
      try {
        await fn({ proxy, client });
      } finally {
        client.close();
        await service.kill();
        await proxy.close();
      }
    };

    /**
     * What runs when a blackhole test kills the link: two split generations (a round trip per
     * token: they stall with the link, whatever their length) and a server-side one that fills
     * the context (5 + 1019 - 1 tokens), so the executor is still decoding it when it finds
     * the link dead.
     */
    const BLACKHOLE_JOBS = [
      ['CCSSSC', 100],
      ['CSCSSC', 100],
      ['SSSSSS', 1019],
    ] as const;

    /**
     * Starts BLACKHOLE_JOBS through `c` (behind `proxy`, on an executor with no session open) and
     * blackholes the link (no FIN, no RST) once each has streamed 2 tokens.
     * @returns the running generations, when the link died, and the tokens each had then.
     */
    const blackholeMidGeneration = async (
      proxy: TcpProxy,
      c: AgentServiceClient,
      deadlineMs: number,
    ): Promise<{ runs: Promise<Outcome>[]; t0: number; seen: number[] }> => {
      await eventually(async () => (await execStatus()).activeSessions === 0, { timeoutMs: 5000, what: 'no session open before' });
      const seen = BLACKHOLE_JOBS.map(() => 0);
      const runs = BLACKHOLE_JOBS.map(([placement, n], i) =>
        generateVia(c, { placement, maxNewTokens: n }, deadlineMs, () => {
          seen[i]++;
        }),
      );
      await eventually(() => seen.every((k) => k >= 2), { timeoutMs: 5000, intervalMs: 2, what: 'every generation under way' });
      expect((await execStatus()).activeSessions).toBe(BLACKHOLE_JOBS.length);
      const t0 = Date.now();
      proxy.blackhole();
      return { runs, t0, seen: [...seen] };
    };

    it('completes generations token-identical when the link slows from 0 to 50 ms one way mid-generation', async () => {
      await withAgentBehindProxy('dev-slow', {}, async ({ proxy, client: c }) => {
        // placement, tokens, server runs per token (each a round trip over the proxy)
        const jobs = [
          ['CCSSSC', 24, 1],
          ['CSCSSC', 14, 2],
          ['SSSSSS', 300, 0],
        ] as const;
        const refs = await Promise.all(jobs.map(([placement, n]) => generateVia(c, { placement, maxNewTokens: n })));
        refs.forEach((r, i) => {
          expect(r.error).toBeUndefined();
          expect(r.ids).toHaveLength(jobs[i][1]);
        });
        const seen = jobs.map(() => 0);
        const tStart = Date.now();
        const runs = jobs.map(([placement, n], i) =>
          generateVia(c, { placement, maxNewTokens: n }, 20_000, () => {
            seen[i]++;
          }),
        );
        await eventually(() => seen.every((k) => k >= 2), { timeoutMs: 10_000, intervalMs: 2, what: 'every generation under way' });
        const atChange = [...seen];
        const tChange = Date.now();
        proxy.setDelayMs(50);
        const outcomes = await Promise.all(runs);
        const afterChange = outcomes.map((o) => tStart + o.ms - tChange);
        process.stderr.write(
          `link 0 -> 50 ms one way: tokens before the change ${atChange.join(' ')}; ms ${outcomes.map((o) => o.ms).join(' ')} (undisturbed ${refs.map((r) => r.ms).join(' ')})\n`,
        );
        expectAccounted(outcomes);
        expect(outcomes.map((o) => o.error?.details)).toEqual(jobs.map(() => undefined));
        outcomes.forEach((o, i) => expect(o.ids).toEqual(refs[i].ids));
        // The change took effect mid-way: each split token after it paid 100 ms per server run (the one in flight perhaps not).
        jobs.forEach(([, n, runsPerToken], i) => {
          if (runsPerToken > 0 && atChange[i] < n) expect(afterChange[i]).toBeGreaterThanOrEqual((n - atChange[i] - 1) * runsPerToken * 100);
        });
      });
    }, 60_000);

    it('frees the sessions of an agent whose link is blackholed mid-generation (no FIN, no RST) within its keepalive, stops the server-side generation, keeps serving, and ends every caller with a clear status within its deadline', async () => {
      // The agent keeps the default keepalive (10 s + 5 s), longer than the callers' deadline: nothing tells it the link died.
      await withAgentBehindProxy('dev-blackhole', {}, async ({ proxy, client: c }) => {
        const ref = await generateVia(c, { placement: 'SSSSSS', maxNewTokens: 8 });
        expect(ref.error).toBeUndefined();
        const deadlineMs = 6000;
        const before = await execStatus();
        const logsBefore = proxied.logs.length;
        const { runs, t0, seen } = await blackholeMidGeneration(proxy, c, deadlineMs);
        // A request the agent takes after the blackhole goes to the same dead connection.
        const late = generateVia(c, { placement: 'CCSSSC', maxNewTokens: 4 }, deadlineMs);
        // The executor got no FIN and no RST, and the server-side generation's writes still
        // succeed into buffers: its keepalive pings go unanswered, so it drops the connection and
        // frees every session on it, the generation mid-way. Bound: GRPC_KEEPALIVE_TIME_MS +
        // GRPC_KEEPALIVE_TIMEOUT_MS + slack, under the idle timeout and the callers' deadline.
        const bound = KEEPALIVE.timeMs + KEEPALIVE.timeoutMs + SLACK_MS;
        await eventually(async () => (await execStatus()).activeSessions === 0, {
          timeoutMs: bound + 2000,
          intervalMs: 50,
          what: 'the executor freeing the blackholed sessions',
        });
        const freedMs = Date.now() - t0;
        expect(freedMs).toBeLessThan(bound);
        expect(freedMs).toBeLessThan(IDLE_MS);
        // Stopped, not run to its end: it says so with the tokens it made, and nothing computes any more.
        // The line is written after the session is freed, and reaches this process through the child's stdout: wait for it.
        const stoppedLines = (): typeof proxied.logs => proxied.logs.slice(logsBefore).filter((l) => l.msg === 'server-side generation stopped before its end');
        await eventually(() => stoppedLines().length > 0, { timeoutMs: 2000, intervalMs: 10, what: 'the executor logging the generation it stopped' });
        const stopped = stoppedLines();
        expect(stopped).toHaveLength(1);
        expect(stopped[0]).toMatchObject({ clientId: 'dev-blackhole', maxNewTokens: 1019, reason: 'cancelled by the client or its connection was lost' });
        expect(stopped[0].tokens).toBeGreaterThanOrEqual(seen[2]);
        expect(stopped[0].tokens).toBeLessThan(1019);
        const idle = await execStatus();
        await sleep(300);
        expect((await execStatus()).stepsCompleted).toBe(idle.stepsCompleted);
        expect(proxy.connections).toBeGreaterThanOrEqual(1); // the blackholed connection is still open on the agent's side
        // Healthy, and serving a new session (not through the dead link) with the undisturbed tokens.
        const health = new HealthClient(`127.0.0.1:${port}`, creds.clientSecurity().credentials);
        const st = await new Promise<ServingStatus>((res, rej) => health.check({ service: '' }, (e, r) => (e ? rej(e) : res(r.status)))).finally(() =>
          health.close(),
        );
        expect(st).toBe(ServingStatus.SERVING);
        const fresh = await RemoteSession.open(execClient, { clientId: 'dev-after', planEpoch: 0, modelId: '', deadline: Date.now() + 10_000 });
        const after: number[] = [];
        await fresh.generate({ dtype: 'int64', shape: [1, PROMPT.length], data: BigInt64Array.from(PROMPT, BigInt) }, 8, (t) => after.push(t.token));
        fresh.end();
        expect(after).toEqual(ref.ids);
        // Every caller: a clear status within its deadline; none hung, none lost.
        const outcomes = [...(await Promise.all(runs)), await late];
        const counts = { total: outcomes.length, completed: outcomes.filter((o) => !o.error).length, failed: outcomes.filter((o) => o.error).length };
        process.stderr.write(
          `blackhole: executor freed ${BLACKHOLE_JOBS.length} sessions in ${freedMs} ms (keepalive ${KEEPALIVE.timeMs} + ${KEEPALIVE.timeoutMs} ms), ` +
            `its server-side generation stopped at ${String(stopped[0].tokens)} of 1019 tokens (${idle.stepsCompleted - before.stepsCompleted} steps since the start); callers ${JSON.stringify(counts)}, ` +
            `${outcomes.map((o) => `${o.error ? grpc.status[o.error.code] : 'OK'} ${o.ms} ms`).join(', ')}\n`,
        );
        expectAccounted(outcomes);
        expect(counts.total).toBe(BLACKHOLE_JOBS.length + 1);
        for (const o of outcomes) expect(o.error?.code).toBe(grpc.status.DEADLINE_EXCEEDED);
        for (const o of outcomes.slice(0, BLACKHOLE_JOBS.length)) expect(o.ids.length).toBeGreaterThanOrEqual(2);
      });
    }, 60_000);

    it('with a short keepalive the agent finds a blackholed link dead and resumes its generations on a new connection, token-identical, long before their deadline; a request caught on the dead link ends with UNAVAILABLE when it is found', async () => {
      /** The agent's GRPC_KEEPALIVE_TIME_MS and GRPC_KEEPALIVE_TIMEOUT_MS. */
      const AGENT_KEEPALIVE = { timeMs: 500, timeoutMs: 500 };
      await withAgentBehindProxy('dev-blackhole-ka', keepaliveEnv(AGENT_KEEPALIVE), async ({ proxy, client: c }) => {
        const deadlineMs = 20_000;
        const refs = await Promise.all(BLACKHOLE_JOBS.map(([placement, n]) => generateVia(c, { placement, maxNewTokens: n }, deadlineMs)));
        refs.forEach((r, i) => {
          expect(r.error).toBeUndefined();
          expect(r.ids).toHaveLength(BLACKHOLE_JOBS[i][1]);
        });
        const short = await generateVia(c, { placement: 'CCSSSC', maxNewTokens: 4 });
        expect(short.error).toBeUndefined();
        const before = await statusOf(c);
        const logsBefore = proxied.logs.length;
        const { runs, t0 } = await blackholeMidGeneration(proxy, c, deadlineMs);
        // Taken on the connection that just died (the agent cannot know yet): its session never opens.
        const late = generateVia(c, { placement: 'CCSSSC', maxNewTokens: 4 }, deadlineMs);
        // The agent's pings go unanswered: within its keepalive it drops the connection, which
        // ends the sessions on it with UNAVAILABLE, and opens a new one through the proxy (new
        // connections pass: the path to the executor is there, the old one is lost).
        const bound = AGENT_KEEPALIVE.timeMs + AGENT_KEEPALIVE.timeoutMs + SLACK_MS;
        await eventually(() => proxy.connections >= 2, { timeoutMs: bound + 2000, intervalMs: 10, what: 'the agent on a new connection' });
        const detectedMs = Date.now() - t0;
        expect(detectedMs).toBeLessThan(bound);
        // A request taken now goes over the new connection.
        const after = await generateVia(c, { placement: 'CCSSSC', maxNewTokens: 4 }, deadlineMs);
        expect(after.error).toBeUndefined();
        expect(after.ids).toEqual(short.ids);
        const outcomes = await Promise.all(runs);
        const lateOutcome = await late;
        process.stderr.write(
          `blackhole, agent keepalive ${AGENT_KEEPALIVE.timeMs} + ${AGENT_KEEPALIVE.timeoutMs} ms: a new connection ${detectedMs} ms after; ` +
            `generations ${outcomes.map((o, i) => `${o.error ? grpc.status[o.error.code] : 'OK'} ${o.ms} ms (undisturbed ${refs[i].ms})`).join(', ')}; ` +
            `caught on the dead link ${lateOutcome.error ? `${grpc.status[lateOutcome.error.code]} '${lateOutcome.error.details}'` : 'OK'} ${lateOutcome.ms} ms; taken after ${after.ms} ms\n`,
        );
        expectAccounted([...outcomes, lateOutcome, after]);
        // Every generation that ran resumed and completed with the undisturbed tokens, far inside its deadline.
        expect(outcomes.map((o) => o.error?.details)).toEqual(BLACKHOLE_JOBS.map(() => undefined));
        outcomes.forEach((o, i) => expect(o.ids).toEqual(refs[i].ids));
        // Far inside: each took about what it took undisturbed plus the time to find the link
        // dead, not its deadline (a fixed fraction of the deadline failed on a machine where the
        // undisturbed 1019 tokens alone took 12.9 s).
        outcomes.forEach((o, i) => expect(o.ms).toBeLessThan(refs[i].ms * 1.5 + bound));
        // The one caught on the dead link had no session to resume: it ends when the link is found dead, with a clear status, not at its deadline.
        if (lateOutcome.error) {
          expect(lateOutcome.error.code).toBe(grpc.status.UNAVAILABLE);
          expect(lateOutcome.ms).toBeLessThan(bound);
        } else {
          expect(lateOutcome.ids).toEqual(short.ids);
        }
        const st = await statusOf(c);
        expect(st.resumedGenerations).toBe(before.resumedGenerations + BLACKHOLE_JOBS.length);
        expect(st.failures).toBe(before.failures + (lateOutcome.error ? 1 : 0));
        // The executor dropped the dead connection too: its server-side generation was stopped there, and every session is freed.
        await eventually(async () => (await execStatus()).activeSessions === 0, { timeoutMs: 5000, intervalMs: 50, what: 'every session freed' });
        const stopped = proxied.logs.slice(logsBefore).filter((l) => l.msg === 'server-side generation stopped before its end');
        expect(stopped).toEqual([
          expect.objectContaining({ clientId: 'dev-blackhole-ka', maxNewTokens: 1019, reason: 'cancelled by the client or its connection was lost' }),
        ]);
      });
    }, 60_000);
  });
});
