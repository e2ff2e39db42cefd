import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { CONNECT_TIMEOUT_MS, LinkEmulator, type ClientAgent } from '@tandem/client-agent';
import { SplitPipeline } from '@tandem/model';
import {
  ExecutorServiceClient,
  executorStatus,
  GenerationOutcome,
  Subjects,
  type ClientPlan,
  type ExecutorAssignment,
  type GenerateRequest,
} from '@tandem/protocol';
import { OnnxStageEngine, type ExecutorServer } from '@tandem/server-executor';
import { createLogger } from '@tandem/service-kit';
import { capturingLogger, eventually, freePort, makeTempModel, type NatsServerHandle, type TempModel } from '@tandem/testkit';
import { makeCredentials, type TestCredentials } from './credentials';
import { allStages, oneClassPlan, startAgent, startExecutor, stopStack, stubPlanner, type Deployment, type StubPlanner } from './stack';

// Several executors behind one plan stream: two real executors (exec-a, which is also the
// agent's EXECUTOR_ADDR, and exec-b) on the same small model, a real agent, and a planner
// stand-in on a real gRPC port that hands the agent plans naming an executor and alternates
// (ClientPlan.executor, .alternates). The services run as deployed (mTLS, tokens, NATS users).
// Which executor ran a generation is read from the executors' own counters (GetStatus), the
// agent's result and status, and the outcome it publishes.

const log = createLogger({ name: 'test', level: 'silent' });
const PROMPT = [464, 2068, 7586, 21831, 18045];
/** Tokens of a generation: long enough, with the emulated link's latency, to be running while a test acts. */
const NEW = 32;
const CLIENT = 'dev';

/** One class covering every prompt, split (device ends, server middle), naming `executor` and `alternates`. */
const planOf = (epoch: number, executor: ExecutorAssignment | undefined, alternates: ExecutorAssignment[] = []): ClientPlan =>
  oneClassPlan(CLIENT, epoch, { expectedNewTokens: NEW, placement: 'CSSSSC' }, { executor, alternates });

describe('an agent follows the executor its plan names', () => {
  let creds: TestCredentials;
  let model: TempModel;
  let nats: NatsServerHandle;
  let nc: NatsConnection;
  let sub: Subscription;
  const execs: { server: ExecutorServer; addr: string; client: ExecutorServiceClient; id: string }[] = [];
  let agent: ClientAgent;
  let planner: StubPlanner;
  let expected: number[];
  let epoch = 1_000;
  const outcomes: GenerationOutcome[] = [];
  const agentLog = capturingLogger('warn');
  const a = (): ExecutorAssignment => ({ id: 'exec-a', address: execs[0].addr });
  const b = (): ExecutorAssignment => ({ id: 'exec-b', address: execs[1].addr });

  beforeAll(async () => {
    creds = makeCredentials({ agents: [CLIENT], executors: ['exec', 'exec-a', 'exec-b'] }); // 'exec': startExecutor's default user, overridden below
    model = await makeTempModel();
    nats = await creds.startNats();
    nc = await creds.connectNats(nats.url);
    sub = nc.subscribe(Subjects.outcome(CLIENT));
    void (async () => {
      for await (const m of sub) outcomes.push(GenerationOutcome.decode(m.data));
    })();
    await nc.flush();
    const d: Deployment = { log, creds, natsUrl: nats.url, telemetryIntervalMs: 200 };
    let S = 0;
    let modelId = '';
    for (const id of ['exec-a', 'exec-b']) {
      const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
      ({ stageCount: S, modelId } = engine);
      const { server, addr } = await startExecutor(engine, d, { serverId: id, natsAuth: creds.natsAuth(id) });
      execs.push({ server, addr, client: new ExecutorServiceClient(addr, ...creds.clientArgs()), id });
    }
    const pipe = await SplitPipeline.load(model.dir, 'C'.repeat(S));
    expected = await pipe.generate(PROMPT, { maxNewTokens: NEW });
    await pipe.close();
    planner = await stubPlanner(creds);
    ({ server: agent } = await startAgent({ modelDir: model.dir, modelId, clientId: CLIENT, stages: allStages(S), executorAddr: execs[0].addr }, d, {
      plannerAddr: planner.addr,
      log: agentLog.log,
      // 2 ms each way: a split generation of NEW tokens takes well over 100 ms, so it is still running while a test acts.
      link: new LinkEmulator({ latencyMs: 2, bytesPerMs: 0 }, { latencyMs: 2, bytesPerMs: 0 }),
    }));
  });

  afterAll(async () => {
    await sub?.drain();
    await nc?.close();
    planner?.stop();
    for (const e of execs.slice(1)) await e.server.stop({ graceMs: 100 });
    await stopStack({ clients: execs.map((e) => e.client), agents: [agent], executor: execs[0]?.server, nats, model });
    creds?.remove();
  });

  /** Hands the agent a plan naming `executor` and `alternates`, and waits until it follows it; resolves with the epoch. */
  const follow = async (executor: ExecutorAssignment | undefined, alternates: ExecutorAssignment[] = []): Promise<number> => {
    const e = ++epoch;
    planner.push(planOf(e, executor, alternates));
    await eventually(() => agent.status().planEpoch === e, { what: `the agent following plan ${e}` });
    return e;
  };
  const request = (placement = ''): GenerateRequest => ({ input: { $case: 'ids', value: { ids: PROMPT } }, maxNewTokens: NEW, placement });
  const run = (placement = '') => agent.generate(request(placement), () => {}, new AbortController().signal);
  const opened = async (): Promise<number[]> => Promise.all(execs.map(async (e) => (await executorStatus(e.client)).sessionsOpened));
  const outcomeOf = (e: number) => eventually(() => outcomes.find((o) => o.planEpoch === e), { what: `the outcome of plan ${e}` });

  it('opens on the executor the plan names, and says so in its status, its result, its outcome and its metrics', async () => {
    const e = await follow(b(), [a()]);
    expect(agent.status()).toMatchObject({ executorAddress: execs[1].addr, executorId: 'exec-b' });
    const before = await opened();
    const r = await run();
    expect(r.stats.ids).toEqual(expected);
    expect(r).toMatchObject({ executorId: 'exec-b', executorAddress: execs[1].addr, epoch: e });
    const after = await opened();
    expect([after[0] - before[0], after[1] - before[1]]).toEqual([0, 1]);
    expect((await outcomeOf(e)).executorId).toBe('exec-b');
    const text = await agent.metrics.registry.metrics();
    expect(text).toContain('tandem_agent_generations_by_executor_total{executor="exec-b",status="ok"} 1');
  });

  it('opens the next generation on the executor a new plan names, while the running one finishes where it is', async () => {
    await follow(b(), [a()]);
    const before = await opened();
    let firstDone = false;
    const first = run().then((r) => {
      firstDone = true;
      return r;
    });
    await eventually(async () => (await executorStatus(execs[1].client)).activeSessions === 1, { what: 'the first generation on exec-b' });
    await follow(a(), [b()]);
    expect(agent.status()).toMatchObject({ executorAddress: execs[0].addr, executorId: 'exec-a' });
    expect(firstDone).toBe(false);
    const second = await run();
    const r1 = await first;
    expect(r1.stats.ids).toEqual(expected);
    expect(second.stats.ids).toEqual(expected);
    expect(r1).toMatchObject({ executorId: 'exec-b' });
    expect(r1.stats.resumes).toBe(0);
    expect(second).toMatchObject({ executorId: 'exec-a' });
    const after = await opened();
    expect([after[0] - before[0], after[1] - before[1]]).toEqual([1, 1]);
  });

  it('falls back to the alternates, then to EXECUTOR_ADDR, when the named executor cannot be reached', async () => {
    const gone = `127.0.0.1:${await freePort()}`;
    let before = await opened();
    const e1 = await follow({ id: 'exec-gone', address: gone }, [b()]);
    const t1 = performance.now();
    const r1 = await run();
    process.stderr.write(`a named executor refusing connections: the generation opened on the alternate, done in ${Math.round(performance.now() - t1)} ms\n`);
    expect(r1.stats.ids).toEqual(expected);
    expect(r1).toMatchObject({ executorId: 'exec-b', epoch: e1 });
    let after = await opened();
    expect([after[0] - before[0], after[1] - before[1]]).toEqual([0, 1]);
    expect(agentLog.lines().some((l) => l.msg === 'executor refused a session as unavailable; trying the next' && l.address === gone)).toBe(true);

    before = after;
    await follow({ id: 'exec-gone', address: gone });
    const r2 = await run('SSSSSS'); // all-server: the executor decodes
    expect(r2.stats.ids).toEqual(expected);
    // EXECUTOR_ADDR (exec-a's address) with no id: no plan named it.
    expect(r2).toMatchObject({ executorId: '', executorAddress: execs[0].addr });
    after = await opened();
    expect([after[0] - before[0], after[1] - before[1]]).toEqual([1, 0]);
    expect(agent.status().failures).toBe(0);
  });

  it('gives up on a named executor that never answers after CONNECT_TIMEOUT_MS and opens on the alternate', async () => {
    // Accepts connections and never says a word (a host whose packets are dropped after the SYN).
    const held: Socket[] = [];
    const silent: Server = createServer((sock) => held.push(sock));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const addr = `127.0.0.1:${(silent.address() as { port: number }).port}`;
    try {
      const before = await opened();
      await follow({ id: 'exec-silent', address: addr }, [b()]);
      const t0 = performance.now();
      const r = await run();
      const ms = performance.now() - t0;
      expect(r.stats.ids).toEqual(expected);
      expect(r).toMatchObject({ executorId: 'exec-b' });
      expect(held.length).toBeGreaterThan(0);
      expect(ms).toBeGreaterThanOrEqual(CONNECT_TIMEOUT_MS - 100);
      process.stderr.write(`a named executor that never answers: the generation opened on the alternate, done in ${Math.round(ms)} ms\n`);
      expect(ms).toBeLessThan(CONNECT_TIMEOUT_MS + 5000);
      const after = await opened();
      expect([after[0] - before[0], after[1] - before[1]]).toEqual([0, 1]);
    } finally {
      for (const sock of held) sock.destroy();
      silent.close();
    }
  });

  it('refuses a plan naming a bad executor address, logs why, and stays on its executor', async () => {
    const e = await follow(b(), [a()]);
    planner.push(planOf(e + 1, { id: 'exec-b', address: 'exec-b-without-port' }));
    await eventually(() => agentLog.lines().some((l) => l.msg === 'refused a plan' && l.epoch === e + 1), { what: 'the refusal' });
    expect(agentLog.lines().find((l) => l.msg === 'refused a plan' && l.epoch === e + 1)?.problem).toBe(
      "executor.address must be host:port (no port given), given 'exec-b-without-port'",
    );
    epoch = e + 1;
    expect(agent.status()).toMatchObject({ planEpoch: e, executorAddress: execs[1].addr, executorId: 'exec-b' });
    const r = await run();
    expect(r).toMatchObject({ executorId: 'exec-b', epoch: e });
  });

  it('opens nowhere a plan names whose certificate the CA did not sign for that host: the handshake fails and it falls back', async () => {
    // exec-b's port, reached through 127.0.0.2, an address its certificate does not name.
    let connections = 0;
    const relay: Server = createServer((sock) => {
      connections++;
      const up = createConnection(Number(execs[1].addr.split(':')[1]), '127.0.0.1');
      sock.pipe(up).pipe(sock);
      sock.on('error', () => up.destroy());
      up.on('error', () => sock.destroy());
    });
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.2', resolve));
    const port = (relay.address() as { port: number }).port;
    try {
      const before = await opened();
      await follow({ id: 'exec-b', address: `127.0.0.2:${port}` });
      const r = await run();
      expect(r.stats.ids).toEqual(expected);
      expect(r).toMatchObject({ executorId: '', executorAddress: execs[0].addr });
      const after = await opened();
      expect([after[0] - before[0], after[1] - before[1]]).toEqual([1, 0]);
      expect(connections).toBeGreaterThan(0); // it got as far as the handshake
      const refused = agentLog
        .lines()
        .filter((l) => l.msg === 'executor refused a session as unavailable; trying the next' && l.address === `127.0.0.2:${port}`);
      expect(refused.length).toBeGreaterThan(0);
      expect(refused[0].why).toContain('ERR_TLS_CERT_ALTNAME_INVALID');
    } finally {
      relay.close();
    }
  });

  // Last: exec-a is stopped for good.
  it('loses no generation when its executor drains: running ones resume elsewhere, new ones open elsewhere, tokens exact', async () => {
    await follow(a(), [b()]);
    const failuresBefore = agent.status().failures;
    const resumedBefore = agent.status().resumedGenerations;
    const before = await opened();
    const running = [run(), run(), run('SSSSSS'), run()];
    await eventually(async () => (await executorStatus(execs[0].client)).activeSessions >= 3, { what: 'generations running on exec-a' });
    const draining = execs[0].server.stop({ graceMs: 30 });
    // Started while exec-a drains: it refuses them as UNAVAILABLE, and they open on the alternate.
    const late = [run(), run('SSSSSS'), run(), run()];
    const results = await Promise.all([...running, ...late]);
    await draining;
    for (const r of results) expect(r.stats.ids).toEqual(expected);
    expect(agent.status().failures).toBe(failuresBefore);
    for (const r of results.slice(4)) expect(r.executorId).toBe('exec-b');
    // The running ones that were cut at the end of the grace resumed on exec-b, never on exec-a again.
    expect(agent.status().resumedGenerations).toBeGreaterThan(resumedBefore);
    for (const r of results.slice(0, 4)) if (r.stats.resumes > 0) expect(r.executorId).toBe('exec-b');
    const resumed = results.filter((r) => r.stats.resumes > 0);
    process.stderr.write(
      `exec-a drained (grace 30 ms) under ${results.length} generations: 0 failed, ${resumed.length} resumed on exec-b ` +
        `(${resumed.map((r) => Math.round(r.stats.totalMs)).join(' ')} ms), ${results.length - 4} started during the drain opened on exec-b ` +
        `(${results
          .slice(4)
          .map((r) => Math.round(r.stats.ttftMs))
          .join(' ')} ms to the first token)\n`,
    );
    const bAfter = (await executorStatus(execs[1].client)).sessionsOpened;
    expect(bAfter - before[1]).toBeGreaterThanOrEqual(4 + (agent.status().resumedGenerations - resumedBefore));
  });
});
