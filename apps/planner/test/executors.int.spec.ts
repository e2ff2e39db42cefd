import { Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { ClientPlan, ClientProfile, GenerationOutcome, ServerLoad, Subjects } from '@tandem/protocol';
import { clientProfile, eventually, planOutcome, sameStageTimes, serverLoad, startNatsServer, type NatsServerHandle } from '@tandem/testkit';
import { sleep } from '@tandem/util';
import { planKeyOf, PlannerServer, type PlannerServerOptions } from '../src';
import { PlanClients, plannerOptions } from './fixtures';

// Several executors behind one planner (docs/planner.md, "Several executors"), over a real
// nats-server and real gRPC ports: the executors' load reports and the clients' profiles are
// published over NATS as the services publish them, and plans are read from WatchPlans and
// ListPlans. Each client is assigned the executor where its plan costs least, spread by the
// load the round adds; a draining or silent executor's clients move at once; a restarted
// planner (JetStream key-value) keeps the assignments and their epochs; with one executor, or
// none advertising an address, plans name none, as before.

const A = { id: 'exec-a', address: '10.0.0.1:50051' };
const B = { id: 'exec-b', address: '10.0.0.2:50051' };
/** The three stages at 0.2 ms each: twice as slow as serverLoad()'s 0.1 ms. */
const SLOW_STAGES = sameStageTimes(3, 0.2);

describe('planner with several executors', () => {
  let nats: NatsServerHandle;
  let nc: NatsConnection;
  const running: PlannerServer[] = [];
  const grpcClients = new PlanClients();
  const timers: NodeJS.Timeout[] = [];

  beforeAll(async () => {
    nats = await startNatsServer({ jetstream: true });
    nc = await connect({ servers: nats.url });
  });

  afterEach(async () => {
    for (const t of timers.splice(0)) clearInterval(t);
    grpcClients.close();
    await Promise.all(running.splice(0).map((p) => p.stop()));
  });

  afterAll(async () => {
    await nc?.close();
    await nats?.stop();
  });

  async function startPlanner(over: Partial<PlannerServerOptions> = {}): Promise<{ planner: PlannerServer; port: number }> {
    const planner = new PlannerServer(plannerOptions({ natsUrl: nats.url, debounceMs: 5, ...over }));
    running.push(planner);
    const { port } = await planner.start();
    return { planner, port };
  }

  const watch = grpcClients.watch.bind(grpcClients);
  const listPlans = grpcClients.listPlans.bind(grpcClients);

  async function load(id: string, over: Partial<ServerLoad> = {}): Promise<void> {
    nc.publish(Subjects.serverLoad(id), ServerLoad.encode(serverLoad({ serverId: id, ...over })).finish());
    await nc.flush();
  }

  async function profiles(ids: readonly string[]): Promise<void> {
    for (const clientId of ids) nc.publish(Subjects.clientProfile(clientId), ClientProfile.encode(clientProfile({ clientId })).finish());
    await nc.flush();
  }

  const ids = (n: number, prefix = 'dev'): string[] => Array.from({ length: n }, (_, i) => `${prefix}${String(i).padStart(2, '0')}`);
  const planOf = (p: PlannerServer, clientId: string): ClientPlan | undefined => p.plans().find((x) => x.clientId === clientId);
  const on = (p: PlannerServer, executorId: string): number => p.plans().filter((x) => x.executor?.id === executorId).length;

  /** Executors A and B report (B with `b` on top) and `p` has heard both. */
  async function bothReport(p: PlannerServer, b: Partial<ServerLoad> = {}): Promise<void> {
    await load(A.id, { address: A.address });
    await load(B.id, { address: B.address, ...b });
    await eventually(() => p.executorIds.length === 2, { what: 'both executors heard' });
  }

  /** `clients` arrive one by one, each planned by `p` before the next: each round sees the assignments before it. */
  async function arriveOneByOne(p: PlannerServer, clients: readonly string[]): Promise<void> {
    for (const id of clients) {
      await profiles([id]);
      await eventually(() => planOf(p, id), { what: `the plan of ${id}` });
    }
  }

  it('spreads a stream of equal clients over two equal executors, names the other as the alternate, and lists both', async () => {
    const { planner, port } = await startPlanner();
    await bothReport(planner);
    const clients = ids(20);
    await arriveOneByOne(planner, clients);
    const plans = clients.map((id) => planOf(planner, id)!);
    for (const p of plans) {
      expect([A.id, B.id]).toContain(p.executor?.id);
      expect(p.executor?.address).toBe(p.executor?.id === A.id ? A.address : B.address);
      // The alternates: the other executor, never the assigned one.
      expect(p.alternates.map((a) => a.id)).toEqual([p.executor?.id === A.id ? B.id : A.id]);
    }
    const onA = on(planner, A.id);
    expect(onA).toBeGreaterThanOrEqual(8);
    expect(onA).toBeLessThanOrEqual(12);
    expect(onA + on(planner, B.id)).toBe(20);

    const listed = await listPlans(port);
    expect(listed.executors.map((e) => [e.id, e.address, e.clients, e.draining])).toEqual([
      [A.id, A.address, onA, false],
      [B.id, B.address, 20 - onA, false],
    ]);
    expect(listed.executors[0].lastReportUnixMs).toBeGreaterThan(Date.now() - 60_000);
    // Later pages carry no summary.
    const first = await listPlans(port, '', 5);
    expect(first.executors).toHaveLength(2);
    expect((await listPlans(port, first.nextPageToken, 5)).executors).toEqual([]);

    // The gauge of clients per executor.
    const text = await planner.metrics.registry.metrics();
    expect(text).toContain(`tandem_planner_executor_clients{executor="${A.id}"} ${onA}`);
    expect(text).toContain(`tandem_planner_executor_clients{executor="${B.id}"} ${20 - onA}`);

    // Re-planned on a material change of one executor's prices, every client stays (stickiness).
    const before = new Map(plans.map((p) => [p.clientId, p.executor?.id]));
    await load(A.id, { address: A.address, utilisation: 0.05 });
    const replans = planner.counters.replans;
    await eventually(() => planner.counters.replans >= replans + 20, { what: 'the re-plan of every client' });
    for (const id of clients) expect(planOf(planner, id)?.executor?.id).toBe(before.get(id));
    expect(planner.counters.executorMoves).toBe(0);
  });

  it('puts more clients on an executor twice as fast', async () => {
    const { planner } = await startPlanner();
    await bothReport(planner, { stages: SLOW_STAGES });
    const clients = ids(12);
    await arriveOneByOne(planner, clients);
    const fast = on(planner, A.id);
    expect(fast).toBeGreaterThan(on(planner, B.id));
    expect(fast + on(planner, B.id)).toBe(12);
    // Its predictions are the fast executor's: the same placement prices less server work there.
    const p = planOf(planner, clients[0])!;
    expect(p.executor?.id).toBe(A.id);
    expect(p.alternates.map((a) => a.id)).toEqual([B.id]);
  });

  it('a draining executor: its clients get plans naming the other within a second, new clients never get it, alternates never name it', async () => {
    const { planner, port } = await startPlanner();
    await bothReport(planner);
    const clients = ids(10);
    const streamsOf = new Map(clients.map((id) => [id, watch(port, id)]));
    await arriveOneByOne(planner, clients);
    const wereOnA = clients.filter((id) => planOf(planner, id)?.executor?.id === A.id);
    expect(wereOnA.length).toBeGreaterThan(0);
    const epochs = new Map(clients.map((id) => [id, planOf(planner, id)!.epoch]));

    const drainedAt = Date.now();
    await load(A.id, { address: A.address, draining: true });
    await eventually(
      () =>
        clients.every((id) => {
          const last = streamsOf.get(id)!.at(-1)?.plan;
          return last?.executor?.id === B.id && last.alternates.length === 0;
        }),
      { what: 'every stream naming the other executor', timeoutMs: 1000 },
    );
    expect(Date.now() - drainedAt).toBeLessThan(1000);
    for (const id of wereOnA) expect(streamsOf.get(id)!.at(-1)!.plan!.epoch).toBeGreaterThan(epochs.get(id)!);
    expect(planner.counters.executorMoves).toBe(wereOnA.length);

    // It keeps reporting while it drains: it gets nobody back, and a new client goes to the other.
    await load(A.id, { address: A.address, draining: true, utilisation: 0.01 });
    await profiles(['late']);
    await eventually(() => planOf(planner, 'late'), { what: 'the new client planned' });
    await sleep(100);
    for (const p of planner.plans()) {
      expect(p.executor?.id).toBe(B.id);
      expect(p.alternates.map((a) => a.id)).not.toContain(A.id);
    }
    for (const got of streamsOf.values()) {
      const after = got.filter((m) => m.plan && m.plan.createdUnixMs >= drainedAt);
      for (const m of after) expect(m.plan?.executor?.id).not.toBe(A.id);
    }
    const listed = await listPlans(port);
    expect(listed.executors.find((e) => e.id === A.id)).toMatchObject({ draining: true, clients: 0 });
    expect(listed.executors.find((e) => e.id === B.id)).toMatchObject({ draining: false, clients: 11 });
  });

  it('an executor silent for the client TTL loses its clients to the one that still reports', async () => {
    const ttl = 1500;
    const { planner, port } = await startPlanner({ clientTtlMs: ttl });
    const clients = ids(6);
    const streamsOf = new Map(clients.map((id) => [id, watch(port, id)]));
    await bothReport(planner);
    await arriveOneByOne(planner, clients);
    expect(on(planner, A.id)).toBeGreaterThan(0);
    expect(on(planner, B.id)).toBeGreaterThan(0);
    // From now on only B reports (and the clients keep their profiles fresh); A falls silent.
    const silentFrom = Date.now();
    timers.push(
      setInterval(() => {
        void load(B.id, { address: B.address });
        void profiles(clients);
      }, 250),
    );
    await eventually(() => on(planner, B.id) === clients.length, { what: 'every client on B', timeoutMs: ttl + 3000 });
    // Not before the TTL: silent is silent for the TTL.
    expect(Date.now() - silentFrom).toBeGreaterThanOrEqual(ttl);
    await eventually(() => clients.every((id) => streamsOf.get(id)!.at(-1)?.plan?.executor?.id === B.id), { what: 'every stream naming B' });
    for (const id of clients) expect(streamsOf.get(id)!.at(-1)?.plan?.alternates).toEqual([]);
  });

  it('one executor, or none advertising an address: plans name no executor (as before several executors)', async () => {
    const { planner, port } = await startPlanner();
    await load(A.id, { address: A.address });
    await profiles(['solo']);
    const p = await eventually(() => planOf(planner, 'solo'), { what: 'the plan' });
    expect(p.executor).toBeUndefined();
    expect(p.alternates).toEqual([]);
    // A second executor advertising no address is planned from (the followed one stays), never assigned.
    await load('plain');
    await eventually(() => planner.executorIds.length === 2, { what: 'the second executor heard' });
    await profiles(['solo2']);
    await eventually(() => planOf(planner, 'solo2'), { what: 'the second plan' });
    expect(planner.plans().every((x) => x.executor === undefined)).toBe(true);
    expect((await listPlans(port)).executors.map((e) => [e.id, e.clients])).toEqual([
      [A.id, 0],
      ['plain', 0],
    ]);

    // Two executors, neither advertising an address: the same.
    const { planner: other } = await startPlanner();
    await load('p1');
    await load('p2');
    await eventually(() => other.executorIds.length >= 2, { what: 'both heard' });
    await profiles(['solo3']);
    const q = await eventually(() => planOf(other, 'solo3'), { what: 'the plan' });
    expect(q.executor).toBeUndefined();
    expect(q.alternates).toEqual([]);
  });

  it('refuses a bad ServerLoad.address and a bad GenerationOutcome.executorId with reasons naming the field; an outcome from another executor is learned from and counted', async () => {
    const { planner } = await startPlanner();
    await load(A.id, { address: 'no-port-here' });
    await load(A.id, { address: `${'h'.repeat(300)}:1` });
    await load(A.id, { address: 'host:70000' });
    await eventually(() => planner.counters.badMessages === 3, { what: 'three loads dropped' });
    expect(planner.counters.dropped['ServerLoad.address:pattern']).toBe(2);
    expect(planner.counters.dropped['ServerLoad.address:length']).toBe(1);
    expect(planner.executorIds).toEqual([]);
    // IPv4, a DNS name and a bracketed IPv6 address are taken.
    await load(A.id, { address: A.address });
    await load(B.id, { address: 'exec-b.internal:50051' });
    await load('exec-c', { address: '[::1]:50051' });
    await eventually(() => planner.executorIds.length === 3, { what: 'the three executors' });
    expect(planner.counters.badMessages).toBe(3);

    await profiles(['dev']);
    const plan = await eventually(() => planOf(planner, 'dev'), { what: 'the plan' });
    expect(plan.executor).toBeDefined();
    const publish = async (o: GenerationOutcome): Promise<void> => {
      nc.publish(Subjects.outcome('dev'), GenerationOutcome.encode(o).finish());
      await nc.flush();
    };
    await publish(planOutcome(plan, { executorId: 'bad id!' }));
    await eventually(() => planner.counters.badMessages === 4, { what: 'the outcome dropped' });
    expect(planner.counters.dropped['GenerationOutcome.executorId:invalid']).toBe(1);
    const other = plan.executor!.id === A.id ? B.id : A.id;
    await publish(planOutcome(plan, { executorId: other }));
    await publish(planOutcome(plan, { executorId: plan.executor!.id }));
    await eventually(() => planner.counters.outcomes === 2, { what: 'both outcomes taken' });
    expect(planner.counters.otherExecutorOutcomes).toBe(1);
  });

  it('a restarted planner keeps the assignments and epochs it stored, whatever order the executors report in', async () => {
    const state = { bucket: 'executors', leaseMs: 600 };
    const { planner: first } = await startPlanner({ state: { ...state, id: 'first' } });
    await eventually(() => first.role === 'leader', { what: 'leading' });
    await bothReport(first);
    const clients = ids(6);
    await arriveOneByOne(first, clients);
    const made = new Map(clients.map((id) => [id, planOf(first, id)!]));
    expect(on(first, A.id)).toBe(3);
    const kv = await new Kvm(nc).open('executors');
    for (const id of clients) {
      await eventually(
        async () => {
          const e = await kv.get(planKeyOf(id));
          return e?.operation === 'PUT' && ClientPlan.decode(e.value).executor?.id === made.get(id)!.executor?.id;
        },
        { what: `the stored plan of ${id} naming its executor` },
      );
    }
    await first.stop();

    const { planner: second, port } = await startPlanner({ state: { ...state, id: 'second' } });
    // Before any telemetry: the stored plans as they were, executors and alternates included.
    for (const id of clients) expect(planOf(second, id)).toEqual(made.get(id));
    expect((await listPlans(port)).executors).toEqual([]);
    const got = watch(port, clients[0]);
    await eventually(() => second.role === 'leader', { what: 'the second leading' });
    // One executor reports first, the clients next: nobody moves to the one heard of.
    await load(B.id, { address: B.address });
    await profiles(clients);
    await sleep(300);
    await load(A.id, { address: A.address });
    await eventually(() => second.counters.replans >= clients.length, { what: 'every client re-planned' });
    await sleep(200);
    for (const id of clients) {
      const p = planOf(second, id)!;
      expect([p.clientId, p.epoch, p.executor, p.alternates]).toEqual([id, made.get(id)!.epoch, made.get(id)!.executor, made.get(id)!.alternates]);
    }
    expect(second.counters.executorMoves).toBe(0);
    expect(second.stateCounters?.writes).toBe(0);
    expect(got.map((m) => m.plan?.epoch)).toEqual([made.get(clients[0])!.epoch]);
    expect((await listPlans(port)).executors.map((e) => [e.id, e.clients])).toEqual([
      [A.id, 3],
      [B.id, 3],
    ]);
  });
});
