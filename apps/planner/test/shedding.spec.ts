import { clientProfile, generationOutcome, sampleValue, serverLoad, stageTimes } from '@tandem/testkit';
import { makerOptions, plannerOptions } from './fixtures';
import { PlanMaker, type PlanMakerOptions } from '../src/plan-maker';
import { PlannerServer } from '../src/planner-server';

// The overload case of the hand-checkable model (three stages, 10-token prompts, one new token,
// SLA 100 ms planned at 90): the device runs its stages in 1, 20 and 100 ms a token, the server
// in 4 ms each. At no load all-server takes 84 ms and C|SS 54 ms (both within 90: C|SS is the
// least work, 44 ms); all-device takes 310 ms, over the SLO whatever the load. At a utilisation
// of 0.9 and above the server's times are priced 10 ×: every plan using it misses, and the
// fastest is CC|S (250 ms, 4 ms of server work).
const DEVICE = stageTimes([1, 20, 100]);
const SERVER = stageTimes([4, 4, 4]);
const device = (clientId: string) => clientProfile({ clientId, unixMs: 0, stages: DEVICE });
const loaded = (utilisation: number) => serverLoad({ utilisation, unixMs: 0, stages: SERVER });
const maker = (over: Partial<PlanMakerOptions> = {}) => new PlanMaker(makerOptions({ serverEntryMs: 0, ...over }));

describe('a class whose plans all miss at the load (PlanMaker)', () => {
  it("'relieve' sends it to its fastest placement at the load; 'hold' keeps the plan that meets its SLOs at no load", () => {
    const [relieved] = maker().plan(device('a'), loaded(0.95), undefined)!;
    expect(relieved).toMatchObject({ placement: 'CCS', feasible: false });
    expect(relieved.predictedServerWork).toBeCloseTo(4, 6);
    const [held] = maker({ overload: 'hold' }).plan(device('a'), loaded(0.95), undefined)!;
    expect(held).toMatchObject({ placement: 'CSS', feasible: false });
    expect(held.predictedServerWork).toBeCloseTo(44, 6);
    // Not overloaded, both are the same least-work plan.
    expect(maker({ overload: 'hold' }).plan(device('a'), loaded(0), undefined)![0].placement).toBe('CSS');
    expect(maker().plan(device('a'), loaded(0), undefined)![0].placement).toBe('CSS');
  });

  it('a shed class gets its least-work plan within the bound on its slow-down, whatever the safety floor; the saving is reported for the others', () => {
    // All-device (310 ms) is within 4 × the stated 100 ms: the least work within the bound.
    const saving: number[] = [];
    const m = maker({ overload: 'hold', shedMaxSlowdown: 4 });
    m.plan(device('a'), loaded(0.95), undefined, 'work', undefined, undefined, saving);
    expect(saving[0]).toBeCloseTo(44, 6); // C|SS (44 ms of server work) against all-device (0)
    const shedSaving: number[] = [];
    const [shed] = m.plan(device('a'), loaded(0.95), undefined, 'work', () => ({ slaScale: 1, allServer: true, shed: true }), undefined, shedSaving)!;
    expect(shed).toMatchObject({ placement: 'CCC', predictedServerWork: 0, feasible: false });
    expect(shedSaving).toEqual([0]);
    // A plan that meets its SLOs is no candidate.
    // Within 2 × 100 ms no plan answers at this load (CC|S takes 250 ms): the class is not a candidate, and not moved if shed.
    const bounded: number[] = [];
    const m2 = maker({ overload: 'hold' });
    m2.plan(device('a'), loaded(0.95), undefined, 'work', undefined, undefined, bounded);
    expect(bounded).toEqual([0]);
    expect(m2.plan(device('a'), loaded(0.95), undefined, 'work', () => ({ slaScale: 1, allServer: false, shed: true }))![0].placement).toBe('CSS');
    const idle: number[] = [];
    m.plan(device('a'), loaded(0), undefined, 'work', undefined, undefined, idle);
    expect(idle).toEqual([0]);
  });
});

describe('the overload shedder in the planner', () => {
  it('sheds an overloaded server the class that saves the most, gives it back once the server has room, and keeps its misses out of the calibration', async () => {
    let now = 1_000_000;
    const p = new PlannerServer(
      plannerOptions({
        maker: maker({ overload: 'hold', shedMaxSlowdown: 4 }),
        shedding: { enabled: true, above: 0.9, below: 0.6, dwellMs: 2000 },
        now: () => now,
      }),
    );
    p.onProfile(device('a'));
    p.onLoad(loaded(0.2));
    p.replan();
    expect(p.plans()[0].classes[0].placement).toBe('CSS');
    expect(p.shedClasses).toEqual([]);
    // Requests of 'a' at 5/s: each of C|SS costs the server 44 ms, 0.22 of it.
    for (let i = 0; i < 50; i++) {
      now += 200;
      p.onOutcome(generationOutcome({ clientId: 'a', placement: 'CSS', planEpoch: p.plans()[0].epoch }));
    }
    // The server measures twice the utilisation the plans offer at the outcomes' rate: a ms of
    // predicted work takes 2 on it, and the shedder's estimates scale by that.
    const offered = p.offeredUtilisation(now);
    expect(offered).toBeGreaterThan(0.05);
    for (let i = 0; i < 8; i++) p.onLoad(loaded(2 * offered));
    expect(p.workScale).toBeCloseTo(2, 1);
    // Saturated, the server reads 1 whatever is offered: nothing is learned from it.
    p.onLoad(loaded(1));
    expect(p.workScale).toBeCloseTo(2, 1);
    p.onLoad(loaded(2 * offered));
    // Overloaded: plans stay C|SS (held) while the shedder's average (weight 0.5 a report) climbs
    // from 0.2 to 0.6 and 0.8; at the third report it reaches 0.9, and the class is shed.
    for (let i = 0; i < 2; i++) {
      now += 1000;
      p.onLoad(loaded(1));
      p.replan();
      expect(p.plans()[0].classes[0]).toMatchObject({ placement: 'CSS', feasible: false });
      expect(p.shedClasses).toEqual([]);
    }
    now += 1000;
    p.onLoad(loaded(1));
    p.replan();
    expect(p.shedClasses).toEqual(['a/short']);
    expect(p.plans()[0].classes[0].placement).toBe('CCC');
    expect(p.counters.shed).toBe(1);
    const scraped = async (series: string): Promise<number | undefined> => sampleValue(await p.metrics.registry.metrics(), series);
    expect(await scraped('tandem_planner_shed_classes')).toBe(1);
    expect(await scraped('tandem_planner_shed_changes_total{change="shed"}')).toBe(1);
    // Its misses while shed are not the plan's: the calibration does not take them (nor tighten it).
    const before = p.observations()[0].classes[0].outcomes;
    expect(before).toBe(50);
    for (let i = 0; i < 30; i++) {
      now += 200;
      p.onOutcome(
        generationOutcome({ clientId: 'a', placement: 'CCC', planEpoch: p.plans()[0].epoch, slaMs: 100, slaMet: false, e2eMs: 500, predictedE2eMs: 220 }),
      );
    }
    expect(p.observations()[0].classes[0].outcomes).toBe(before);
    // The server falls to 0.3: giving 'a' back adds 0.22, within 0.6, once the dwell has passed.
    for (let i = 0; i < 4; i++) {
      now += 1000;
      p.onLoad(loaded(0.3));
    }
    p.replan();
    expect(p.shedClasses).toEqual([]);
    expect(p.counters.restored).toBe(1);
    expect(await scraped('tandem_planner_shed_classes')).toBe(0);
    expect(await scraped('tandem_planner_shed_changes_total{change="restored"}')).toBe(1);
    expect(p.plans()[0].classes[0].placement).toBe('CSS');
  });

  it('sheds nothing with shedding off: the class goes to its fastest placement at the load, as it always did', () => {
    const p = new PlannerServer(plannerOptions({ maker: maker() }));
    p.onProfile(device('a'));
    p.onLoad(loaded(1));
    p.replan();
    expect(p.plans()[0].classes[0].placement).toBe('CCS');
    expect(p.shedClasses).toEqual([]);
  });
});
