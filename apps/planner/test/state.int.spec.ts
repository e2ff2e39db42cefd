import * as grpc from '@grpc/grpc-js';
import { Kvm, type KV } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { ClassPlacement, ClientPlan, ClientProfile, ServerLoad, Subjects, ServingStatus, HealthClient } from '@tandem/protocol';
import { capturingLogger, clientProfile, eventually, serverLoad, stageTimes, startNatsServer, TcpProxy, type NatsServerHandle } from '@tandem/testkit';
import { sleep } from '@tandem/util';
import { EPOCH_KEY, planKeyOf, PLANNER_LEADER_HEALTH, PlannerServer, type PlannerServerOptions } from '../src';
import { PlanClients, plannerOptions } from './fixtures';

// The planner's state in NATS JetStream key-value and its leader election, over a real
// nats-server with JetStream and real planners on real gRPC ports: a restarted planner continues
// the stored plans and epochs, two planners elect one leader while the other serves the same
// plans, a stopped leader hands over at once, and entries the planner did not write are refused.

const LEASE_MS = 600;
/** A device that plans to some device placement, and one that plans all-server (another placement). */
const FAST = stageTimes([1, 5, 100]);
const SLOW = stageTimes([400, 4000, 40000]);

describe('planner state in JetStream key-value', () => {
  let nats: NatsServerHandle;
  let nc: NatsConnection;
  let kvm: Kvm;
  const running: PlannerServer[] = [];
  const grpcClients = new PlanClients();

  beforeAll(async () => {
    nats = await startNatsServer({ jetstream: true });
    nc = await connect({ servers: nats.url });
    kvm = new Kvm(nc);
  });

  afterEach(async () => {
    grpcClients.close();
    await Promise.all(running.splice(0).map((p) => p.stop()));
  });

  afterAll(async () => {
    await nc?.close();
    await nats?.stop();
  });

  async function startPlanner(bucket: string, id: string, over: Partial<PlannerServerOptions> = {}): Promise<{ planner: PlannerServer; port: number }> {
    const planner = new PlannerServer(plannerOptions({ natsUrl: nats.url, debounceMs: 5, state: { bucket, leaseMs: LEASE_MS, id }, ...over }));
    running.push(planner);
    const { port } = await planner.start();
    return { planner, port };
  }

  const watch = grpcClients.watch.bind(grpcClients);
  const listPlans = grpcClients.listPlans.bind(grpcClients);

  async function health(port: number, service: string): Promise<ServingStatus> {
    const c = grpcClients.add(new HealthClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure()));
    return new Promise((resolve, reject) => c.check({ service }, (err, res) => (err ? reject(err) : resolve(res!.status))));
  }

  async function telemetry(clientId: string, stages = FAST): Promise<void> {
    nc.publish(Subjects.clientProfile(clientId), ClientProfile.encode(clientProfile({ clientId, stages })).finish());
    nc.publish(Subjects.serverLoad('srv'), ServerLoad.encode(serverLoad()).finish());
    await nc.flush();
  }

  async function storedPlan(kv: KV, clientId: string): Promise<ClientPlan | undefined> {
    const e = await kv.get(planKeyOf(clientId));
    return e && e.operation === 'PUT' ? ClientPlan.decode(e.value) : undefined;
  }

  const planOf = (p: PlannerServer, clientId: string): ClientPlan | undefined => p.plans().find((x) => x.clientId === clientId);
  const placements = (p: ClientPlan | undefined): string[] => (p?.classes ?? []).map((c) => c.placement);

  /** A planner 'first' on `bucket`, leading, once it made a plan for `clientId` and stored it: the planner, the plan and the bucket. */
  async function firstStoredPlan(bucket: string, clientId: string): Promise<{ first: PlannerServer; made: ClientPlan; kv: KV }> {
    const { planner: first } = await startPlanner(bucket, 'first');
    await eventually(() => first.role === 'leader', { what: 'the first planner leading' });
    await telemetry(clientId);
    const made = await eventually(() => planOf(first, clientId), { what: 'the first plan' });
    const kv = await kvm.open(bucket);
    await eventually(async () => (await storedPlan(kv, clientId))?.epoch === made.epoch, { what: 'the plan in the bucket' });
    return { first, made, kv };
  }

  it('a restarted planner continues the stored plans: same epoch, and a re-plan to the same placements pushes nothing', async () => {
    const { first, made, kv } = await firstStoredPlan('restart', 'dev');
    expect(Number((await kv.get(EPOCH_KEY))?.string())).toBe(made.epoch);
    await first.stop();

    const { planner: second, port } = await startPlanner('restart', 'second');
    // Before any telemetry: it serves the stored plan as it is, and never hands out a lower epoch.
    expect(planOf(second, 'dev')).toEqual(made);
    expect(second.epoch).toBeGreaterThanOrEqual(made.epoch);
    const got = watch(port, 'dev');
    await eventually(() => got.length >= 1, { what: 'the stored plan on a new stream' });
    expect(got[0].plan?.epoch).toBe(made.epoch);
    expect(got[0].noPlanReason).toBe('');

    // The first stopped cleanly (lease released): the second leads at once and re-plans from the stored plan.
    await eventually(() => second.role === 'leader', { what: 'the second planner leading' });
    await telemetry('dev');
    await eventually(() => second.counters.replans >= 1, { what: 'the re-plan' });
    await sleep(200);
    expect(planOf(second, 'dev')?.epoch).toBe(made.epoch);
    expect(placements(planOf(second, 'dev'))).toEqual(placements(made));
    expect(got).toHaveLength(1);
    // Nothing changed, nothing written (writes are per changed plan).
    expect(second.stateCounters?.writes).toBe(0);

    // A real change takes a new epoch, above the stored one, pushed and written.
    await telemetry('dev', SLOW);
    await eventually(() => got.length >= 2, { what: 'the changed plan pushed' });
    expect(placements(got[1].plan)).not.toEqual(placements(made));
    expect(got[1].plan!.epoch).toBeGreaterThan(made.epoch);
    await eventually(async () => (await storedPlan(kv, 'dev'))?.epoch === got[1].plan!.epoch, { what: 'the changed plan in the bucket' });
    // The plan and the epoch counter: two writes.
    await eventually(() => second.stateCounters?.writes === 2, { what: 'two writes' });
    expect(Number((await kv.get(EPOCH_KEY))?.string())).toBe(got[1].plan!.epoch);
  });

  it('deletes a stored plan whose client is not heard of within the client TTL of taking the lead, and serves it until then', async () => {
    const { first, made, kv } = await firstStoredPlan('ttl', 'gone');
    await first.stop();
    const { planner: second } = await startPlanner('ttl', 'second', { clientTtlMs: 1000 });
    expect(planOf(second, 'gone')).toEqual(made);
    await eventually(() => second.role === 'leader', { what: 'leading' });
    // No profile of 'gone' comes: after the TTL (swept every second) its plan goes, from memory and from the bucket.
    await eventually(() => planOf(second, 'gone') === undefined, { what: 'the plan forgotten', timeoutMs: 5000 });
    await eventually(async () => (await kv.get(planKeyOf('gone')))?.operation === 'DEL', { what: 'the plan deleted in the bucket' });
  });

  it('two planners: one leads, the other stands by serving the same plans (pushed as they change); a stopped leader hands over at once', async () => {
    const a = await startPlanner('pair', 'a');
    await eventually(() => a.planner.role === 'leader', { what: 'a leading' });
    const b = await startPlanner('pair', 'b');
    await sleep(LEASE_MS * 2);
    expect([a.planner.role, b.planner.role]).toEqual(['leader', 'standby']);
    expect(await health(a.port, PLANNER_LEADER_HEALTH)).toBe(ServingStatus.SERVING);
    expect(await health(b.port, PLANNER_LEADER_HEALTH)).toBe(ServingStatus.NOT_SERVING);
    expect((await listPlans(a.port)).plannerRole).toBe('leader');
    expect((await listPlans(b.port)).plannerRole).toBe('standby');

    // Both hear the telemetry; only the leader plans. The standby's stream gets the leader's plan.
    const onB = watch(b.port, 'dev');
    await eventually(() => onB.length >= 1, { what: 'the standby answering' });
    await telemetry('dev');
    const made = await eventually(() => planOf(a.planner, 'dev'), { what: "the leader's plan" });
    await eventually(() => onB.some((m) => m.plan?.epoch === made.epoch), { what: "the leader's plan on the standby's stream" });
    expect(b.planner.counters.replans).toBe(0);
    expect((await listPlans(b.port)).plans).toEqual([made]);

    // A change made by the leader reaches the standby's watchers.
    await telemetry('dev', SLOW);
    const changed = await eventually(() => onB.find((m) => m.plan && m.plan.epoch > made.epoch)?.plan, { what: 'the changed plan on the standby' });
    expect(changed).toEqual(planOf(a.planner, 'dev'));

    // The leader stops cleanly: it releases its lease, so the standby leads at its next step, not after a lease.
    const stoppedAt = Date.now();
    await a.planner.stop();
    await eventually(() => b.planner.role === 'leader', { what: 'b leading', timeoutMs: LEASE_MS * 3 });
    const tookMs = Date.now() - stoppedAt;
    expect(tookMs).toBeLessThan(LEASE_MS);
    expect(await health(b.port, PLANNER_LEADER_HEALTH)).toBe(ServingStatus.SERVING);
    // It re-plans every client it heard of: same inputs, same placements, same epoch; nothing pushed.
    await eventually(() => b.planner.counters.replans >= 1, { what: 'the new leader re-planning' });
    await sleep(200);
    expect(planOf(b.planner, 'dev')?.epoch).toBe(changed.epoch);
    expect(onB.filter((m) => m.plan).map((m) => m.plan!.epoch)).toEqual([made.epoch, changed.epoch]);
    await telemetry('dev', FAST);
    await eventually(() => onB.some((m) => m.plan && m.plan.epoch > changed.epoch), { what: "the new leader's own change" });
  });

  it('refuses entries it did not write (bad bytes, another client, other classes, an unknown key, a bad epoch), names key and rule, and carries on', async () => {
    const kv = await kvm.create('foreign', { history: 1 });
    const good = (clientId: string, epoch: number): ClientPlan => ({
      clientId,
      epoch,
      algorithm: 'dp',
      createdUnixMs: Date.now(),
      alternates: [],
      classes: [ClassPlacement.fromPartial({ name: 'short', maxPromptTokens: 10, placement: 'SSS' })],
    });
    await kv.put(planKeyOf('garbage'), new Uint8Array([0xff, 0xff, 0xff, 0x07, 0x01]));
    await kv.put(planKeyOf('someone'), ClientPlan.encode(good('else', 5)).finish());
    await kv.put(planKeyOf('classes'), ClientPlan.encode({ ...good('classes', 5), classes: [] }).finish());
    await kv.put('stray-key', new Uint8Array([1, 2, 3]));
    await kv.put(EPOCH_KEY, new TextEncoder().encode('soon'));
    await kv.put(planKeyOf('fine'), ClientPlan.encode(good('fine', 1234)).finish());
    const captured = capturingLogger('info');
    const { planner, port } = await startPlanner('foreign', 'checker', { log: captured.log });
    expect(planner.stateCounters?.refused).toEqual({
      'ClientPlan:decode': 1,
      'ClientPlan.clientId:key': 1,
      'ClientPlan.classes:classes': 1,
      'key:unknown': 1,
      'epoch:format': 1,
    });
    const warned = captured.lines().filter((l) => l.level === 40 && l.msg.startsWith('refused an entry of the plans bucket'));
    expect(warned.map((l) => [l.key, l.reason])).toEqual(
      expect.arrayContaining([
        ['plans.garbage', 'ClientPlan:decode'],
        ['plans.someone', 'ClientPlan.clientId:key'],
        ['plans.classes', 'ClientPlan.classes:classes'],
        ['stray-key', 'key:unknown'],
        ['epoch', 'epoch:format'],
      ]),
    );
    expect(String(warned.find((l) => l.reason === 'ClientPlan.clientId:key')?.err)).toContain(
      "ClientPlan.clientId must be the key's client 'someone', given 'else'",
    );
    // The good entry is served; the planner plans on.
    expect((await listPlans(port)).plans.map((p) => p.clientId)).toEqual(['fine']);
    await eventually(() => planner.role === 'leader', { what: 'leading' });
    await telemetry('dev');
    await eventually(() => planOf(planner, 'dev'), { what: 'a plan made after the refusals' });
    // A bad entry arriving later is refused the same way, while running.
    await kv.put(planKeyOf('late'), new Uint8Array([0x0a, 0xff]));
    await eventually(() => planner.stateCounters?.refused['ClientPlan:decode'] === 2, { what: 'the late bad entry refused' });
    expect(planner.metrics.registry.getSingleMetric('tandem_planner_state_refused_total')).toBeDefined();
  });

  it('a leader cut off from NATS keeps serving from memory, counts its failed writes and stands by; the other takes over, never two leaders at once', async () => {
    const proxy = await TcpProxy.start(`127.0.0.1:${nats.port}`);
    try {
      const captured = capturingLogger('info');
      const a = await startPlanner('partition', 'a', { natsUrl: `nats://${proxy.address}`, log: captured.log });
      await eventually(() => a.planner.role === 'leader', { what: 'a leading' });
      const capturedB = capturingLogger('info');
      const b = await startPlanner('partition', 'b', { log: capturedB.log });
      await telemetry('dev');
      const made = await eventually(() => planOf(a.planner, 'dev'), { what: "a's plan" });
      await eventually(() => planOf(b.planner, 'dev')?.epoch === made.epoch, { what: "a's plan on b" });
      const onA = watch(a.port, 'dev');
      await eventually(() => onA.length >= 1, { what: "a's stream" });

      proxy.blackhole();
      const cutAt = Date.now();
      // A change reaches a (its profile handed over directly: its NATS path is dead): planned and pushed from memory, its write fails.
      a.planner.onProfile(clientProfile({ clientId: 'dev', stages: SLOW }));
      await eventually(() => onA.length >= 2, { what: 'the change pushed from memory' });
      await eventually(() => (a.planner.stateCounters?.writeFailures ?? 0) >= 1, { what: 'the failed write counted', timeoutMs: LEASE_MS * 3 });
      expect(captured.lines().some((l) => l.level === 40 && l.msg.startsWith('writing the plans bucket failed'))).toBe(true);
      let both = 0;
      await eventually(
        () => {
          if (a.planner.role === 'leader' && b.planner.role === 'leader') both++;
          return b.planner.role === 'leader';
        },
        { what: 'b leading', timeoutMs: LEASE_MS * 4, intervalMs: 10 },
      );
      const tookMs = Date.now() - cutAt;
      expect(both).toBe(0);
      expect(a.planner.role).toBe('standby');
      // Not only never seen together in 10 ms samples: by their own logs, a stood by before b took the lead.
      const stoodBy = captured.lines().find((l) => l.msg.startsWith('no lease renewal went through'));
      const took = capturedB.lines().filter((l) => l.msg === 'took the lead');
      expect(stoodBy).toBeDefined();
      expect(took).toHaveLength(1);
      expect(Number(took[0]!.time)).toBeGreaterThan(Number(stoodBy!.time));
      // Within the bound: the lease unrenewed for a whole lease, seen within a step (a quarter lease) on each side.
      expect(tookMs).toBeLessThan(LEASE_MS * 1.5 + 300);
      // a still serves its streams from memory.
      expect(planOf(a.planner, 'dev')?.epoch).toBe(onA[1].plan?.epoch);
      expect(b.planner.epoch).toBeGreaterThanOrEqual(made.epoch);
    } finally {
      await proxy.close();
    }
  });

  it('on a NATS server without JetStream: warns once, naming PLANNER_STATE_BUCKET, and plans as without a bucket', async () => {
    const plain = await startNatsServer();
    try {
      const captured = capturingLogger('info');
      const { planner } = await startPlanner('unused', 'plain', { natsUrl: plain.url, log: captured.log });
      expect(planner.role).toBeUndefined();
      expect(planner.planning).toBe(true);
      const warned = captured.lines().filter((l) => l.level === 40 && l.msg.includes("PLANNER_STATE_BUCKET='unused' needs JetStream"));
      expect(warned).toHaveLength(1);
      const pub = await connect({ servers: plain.url });
      pub.publish(Subjects.clientProfile('dev'), ClientProfile.encode(clientProfile({ clientId: 'dev', stages: FAST })).finish());
      pub.publish(Subjects.serverLoad('srv'), ServerLoad.encode(serverLoad()).finish());
      await pub.flush();
      await eventually(() => planOf(planner, 'dev'), { what: 'a plan without state' });
      await pub.close();
    } finally {
      await Promise.all(running.splice(0).map((p) => p.stop()));
      await plain.stop();
    }
  });
});
