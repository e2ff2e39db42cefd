import { clientProfile, generationOutcome, serverLoad, stageTimes } from '@tandem/testkit';
import { makerOptions, plannerOptions } from './fixtures';
import { PlanMaker } from '../src/plan-maker';
import { PlannerServer } from '../src/planner-server';

// The choice among executors within one re-plan round (docs/planner.md, "Several executors"),
// on a planner driven by hand with a fake clock: clients assigned earlier in a round raise
// their executor's expected utilisation at their request rates, so a batch of clients with
// known rates spreads over a slightly slower executor too instead of herding onto the fastest.

/** Executor stage times: embed 0.1 ms, block 2 ms a prompt token, head 20 ms a row; `x` times that. */
const executorStages = (x: number): ReturnType<typeof stageTimes> => stageTimes([0.1 * x, 2 * x, 20 * x], [0.1 * x, 2 * x, 20 * x]);

describe('the choice of executor within a round', () => {
  it('counts the load the round adds: with known request rates, a batch spreads onto a 1.2x slower executor', async () => {
    let now = 1_000_000;
    const p = new PlannerServer(plannerOptions({ now: () => now }));
    const clients = Array.from({ length: 10 }, (_, i) => `dev${i}`);
    for (const id of clients) p.onProfile(clientProfile({ clientId: id, unixMs: now }));
    // 5 requests a second of each client over 10 s, before any executor reported (no plans yet).
    for (let t = 0; t < 50; t++) {
      now += 200;
      for (const id of clients) p.onOutcome(generationOutcome({ clientId: id, placement: 'CCS', unixMs: now }));
    }
    p.onLoad(serverLoad({ serverId: 'fast', address: '10.0.0.1:1', unixMs: now, stages: executorStages(1) }));
    p.onLoad(serverLoad({ serverId: 'slow', address: '10.0.0.2:1', unixMs: now, stages: executorStages(1.2) }));
    p.replan();
    const on = (id: string): string[] =>
      p
        .plans()
        .filter((x) => x.executor?.id === id)
        .map((x) => x.clientId);
    // Each plan is C C | S: 20 ms of head on 'fast' (24 on 'slow') at about 3.2 requests a
    // second: 0.06 of an executor per client. The first clients go to 'fast'; once what they add
    // makes 'fast' dearer than an idle 'slow' (20 / (1 - u) > 24), the next go to 'slow'.
    expect(p.plans()).toHaveLength(10);
    expect(p.plans().every((x) => x.classes[0].placement === 'CCS')).toBe(true);
    expect(on('fast').length).toBeGreaterThan(on('slow').length);
    expect(on('slow').length).toBeGreaterThanOrEqual(2);
    expect(on('fast')).toContain('dev0');
    // One round, one epoch: every plan of the batch carries it.
    expect(new Set(p.plans().map((x) => x.epoch)).size).toBe(1);
    await p.stop();
  });

  it('without request rates (new clients), equal executors alternate by the plans naming each', async () => {
    const now = 1_000_000;
    const p = new PlannerServer(plannerOptions({ now: () => now }));
    p.onLoad(serverLoad({ serverId: 'a', address: '10.0.0.1:1', unixMs: now, stages: executorStages(1) }));
    p.onLoad(serverLoad({ serverId: 'b', address: '10.0.0.2:1', unixMs: now, stages: executorStages(1) }));
    for (let i = 0; i < 9; i++) p.onProfile(clientProfile({ clientId: `dev${i}`, unixMs: now }));
    p.replan();
    const counts = p.executorSummaries().map((e) => e.clients);
    expect(counts.sort()).toEqual([4, 5]);
    // The 1.2x slower one differs by more than the hysteresis (5 %): without rates nothing pushes a client there.
    const q = new PlannerServer(plannerOptions({ now: () => now }));
    q.onLoad(serverLoad({ serverId: 'a', address: '10.0.0.1:1', unixMs: now, stages: executorStages(1) }));
    q.onLoad(serverLoad({ serverId: 'b', address: '10.0.0.2:1', unixMs: now, stages: executorStages(1.2) }));
    for (let i = 0; i < 9; i++) q.onProfile(clientProfile({ clientId: `dev${i}`, unixMs: now }));
    q.replan();
    expect(q.executorSummaries().map((e) => [e.id, e.clients])).toEqual([
      ['a', 9],
      ['b', 0],
    ]);
    await p.stop();
    await q.stop();
  });

  it("sheds per executor: each executor's shedder reads its own utilisation and sheds among its own clients", async () => {
    // shedding.spec.ts's overload case: the device runs 1, 20 and 100 ms a token, the server 4 ms a
    // stage; a shed class may take 4 x its SLO (CC|S, 250 ms at a saturated server's prices).
    let now = 1_000_000;
    const p = new PlannerServer(
      plannerOptions({
        maker: new PlanMaker(makerOptions({ serverEntryMs: 0, overload: 'hold', shedMaxSlowdown: 4 })),
        shedding: { enabled: true, above: 0.9, below: 0.6, dwellMs: 2000 },
        now: () => now,
      }),
    );
    const at = (serverId: string, utilisation: number): void =>
      p.onLoad(serverLoad({ serverId, address: `${serverId}.internal:50051`, utilisation, unixMs: now, stages: stageTimes([4, 4, 4]) }));
    at('x', 0.2);
    at('y', 0.2);
    for (const id of ['a', 'b']) p.onProfile(clientProfile({ clientId: id, unixMs: now, stages: stageTimes([1, 20, 100]) }));
    p.replan();
    expect(p.plans().map((x) => [x.clientId, x.executor?.id, x.classes[0].placement])).toEqual([
      ['a', 'x', 'CSS'],
      ['b', 'y', 'CSS'],
    ]);
    // Both saturated: three reports each bring each shedder's average over 0.9; each sheds its own client.
    for (let i = 0; i < 3; i++) {
      now += 1000;
      at('x', 1);
      at('y', 1);
      p.replan();
    }
    expect(p.shedClasses.sort()).toEqual(['a/short', 'b/short']);
    expect(p.counters.shed).toBe(2);
    expect(p.plans().map((x) => [x.executor?.id, x.classes[0].placement])).toEqual([
      ['x', 'CCC'],
      ['y', 'CCC'],
    ]);
    // Only 'y' recovers: its shedder gives 'b' back; 'x' stays saturated and keeps 'a' shed, unless
    // 'a' moves to 'y', which it does once 'y' is cheaper by more than the hysteresis: then it
    // leaves its shed pair with 'x' and is planned on 'y' as any client there.
    for (let i = 0; i < 5; i++) {
      now += 1000;
      at('x', 1);
      at('y', 0.1);
      p.replan();
    }
    expect(p.counters.restored).toBeGreaterThanOrEqual(1);
    expect(p.shedClasses).toEqual([]);
    expect(p.plans().map((x) => [x.clientId, x.executor?.id, x.classes[0].placement])).toEqual([
      ['a', 'y', 'CSS'],
      ['b', 'y', 'CSS'],
    ]);
    expect(p.counters.executorMoves).toBe(1);
    await p.stop();
  });
});
