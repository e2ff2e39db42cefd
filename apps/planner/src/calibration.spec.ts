import type { ClassObservations, ClassPlacement, ClientProfile, ServerLoad } from '@tandem/protocol';
import { clientProfile, serverLoad, stageTimes } from '@tandem/testkit';
import { Calibrator, DEFAULT_CALIBRATION, type CalibrationOptions } from './calibration';
import type { ValidOutcome } from './outcomes';
import { PlanMaker } from './plan-maker';
import { makerOptions, SIX_STAGES } from '../test/fixtures';
import { sameStageTimes } from '@tandem/testkit';

// A hand-checkable client: three stages, one class of 10-token prompts and one new token (no
// decode step). The device runs embed in 10 ms, the block in 50 ms and the head in 1000 ms;
// the server runs each in 1 ms. Against 90 ms (SLA 100 x margin 0.9): CCS (about 61 ms, 1 ms of
// server work) is the plan; an SLA tightened below about 61 ms gives CSS (about 12 ms, 2 ms),
// and the floor all-server SSS (about 3 ms, 3 ms). Safer = more server = lower predicted latency.
const PROFILE: ClientProfile = clientProfile({ clientId: 'dev', unixMs: 0 });
const LOAD: ServerLoad = serverLoad({
  serverId: 's',
  unixMs: 0,
  // The head's one sampled row costs 1 ms (a generation's prefill runs it on the last position only).
  stages: stageTimes([0.1, 0.1, 0.1], [0.1, 0.1, 1]),
});
const maker = new PlanMaker(makerOptions());

const OPTS: CalibrationOptions = { ...DEFAULT_CALIBRATION, dwellMs: 1000, relaxDwellMs: 3000 };

/** The planner's loop around one client, as PlannerServer runs it, with an injected clock. */
class Harness {
  now = 1_000_000;
  epoch = 0;
  plan: ClassPlacement[] = [];
  /** Every placement the client was given, in order (a new entry per plan change). */
  readonly history: string[] = [];
  /** The safety change the last outcome made, if any. */
  lastChange: 'tighten' | 'relax' | 'release' | undefined;
  constructor(readonly cal: Calibrator) {
    this.replan();
  }

  replan(): void {
    for (let i = 0; i < 100; i++) {
      const classes = maker.plan(PROFILE, LOAD, this.plan.length ? this.plan : undefined, 'work', this.cal.adjustments('dev'))!;
      if (classes[0].placement !== this.plan[0]?.placement) {
        this.epoch++;
        this.history.push(classes[0].placement);
      }
      this.plan = classes;
      if (!this.cal.planned('dev', classes, this.epoch, this.now)) return;
    }
    throw new Error('the tighten search did not end');
  }

  /** One outcome of the plan in force, `good` or a miss, measured at `ratio` x its prediction; advances the clock by `stepMs`. */
  outcome(good: boolean, opts: { ratio?: number; stepMs?: number; placement?: string; epoch?: number } = {}): boolean {
    this.now += opts.stepMs ?? 100;
    const p = this.plan[0];
    const e2e = p.predictedLatencyMs * (opts.ratio ?? 1);
    const o: ValidOutcome = {
      clientId: 'dev',
      requestClass: 'short',
      placement: opts.placement ?? p.placement,
      planEpoch: opts.epoch ?? this.epoch,
      ok: true,
      good,
      predicted: { e2e: p.predictedLatencyMs, ttft: 0, tpot: 0 },
      measured: { e2e, ttft: e2e, tpot: 0 },
      unixMs: this.now,
    };
    const { replan, safety } = this.cal.record(o, this.now);
    this.lastChange = safety?.change;
    if (replan) this.replan();
    return replan;
  }

  get placement(): string {
    return this.plan[0].placement;
  }
  get observed() {
    return this.cal.observations('dev', ['short'])[0];
  }
}

describe('Calibrator: correction factors', () => {
  it('keeps the model prediction (factor 1) below the minimum number of outcomes, then applies the observed ratio', () => {
    const h = new Harness(new Calibrator(OPTS));
    expect(h.placement).toBe('CCS');
    for (let i = 0; i < OPTS.minOutcomes - 1; i++) expect(h.outcome(true, { ratio: 1.6, stepMs: 250 })).toBe(false);
    expect(h.observed).toMatchObject({ e2eCorrection: 1, e2eRatio: 1 });
    expect(h.cal.adjustments('dev')!('short')).toEqual({ slaScale: 1, allServer: false });
    expect(h.placement).toBe('CCS');
    // the fifth outcome, after the dwell: the factor moves from 1 to 1.6, a material change, and the client is re-planned
    expect(h.outcome(true, { ratio: 1.6, stepMs: 250 })).toBe(true);
    expect(h.observed.e2eCorrection).toBeCloseTo(1.6, 9);
    expect(h.observed.e2eRatio).toBeCloseTo(1.6, 9);
    // planned against 90 / 1.6 = 56 ms: CCS (61 ms) no longer fits, CSS does
    expect(h.placement).toBe('CSS');
    expect(h.observed.safetyFactor).toBe(1);
  });

  it('decays old evidence with the configured half-life (in outcomes), as a geometric mean', () => {
    const cal = new Calibrator({ ...OPTS, halfLife: 20 });
    const h = new Harness(cal);
    for (let i = 0; i < 20; i++) h.outcome(true, { ratio: 2 });
    expect(h.observed.e2eCorrection).toBeCloseTo(2, 9);
    for (let i = 0; i < 20; i++) h.outcome(true, { ratio: 1 });
    // the first 20 now weigh half of what the last 20 do: ln 2 x (1/2) / (1 + 1/2)
    expect(h.observed.e2eCorrection).toBeCloseTo(2 ** (1 / 3), 9);
  });

  it('re-plans only when the factor moved more than the material change since the client was planned', () => {
    const h = new Harness(new Calibrator({ ...OPTS, materialChange: 0.1 }));
    for (let i = 0; i < OPTS.minOutcomes; i++) h.outcome(true, { ratio: 1.05, stepMs: 300 });
    expect(h.observed.e2eRatio).toBeCloseTo(1.05, 9);
    // 1 -> 1.05 is within 10 %: no re-plan, the plan keeps factor 1
    for (let i = 0; i < 3; i++) expect(h.outcome(true, { ratio: 1.05 })).toBe(false);
    expect(h.observed.e2eCorrection).toBe(1);
    expect(h.outcome(true, { ratio: 3 })).toBe(true);
    expect(h.observed.e2eCorrection).toBeCloseTo(h.observed.e2eRatio, 12);
  });

  it('bounds one wild ratio, so a single absurd figure cannot swing the factor beyond 100x', () => {
    const h = new Harness(new Calibrator({ ...OPTS, minOutcomes: 1, halfLife: 1e-3 }));
    h.outcome(true, { ratio: 1e6 });
    expect(h.observed.e2eRatio).toBeCloseTo(100, 6);
  });

  it('refuses options out of range, naming the option', () => {
    expect(() => new Calibrator({ ...OPTS, step: 1 })).toThrow('calibration option step must be a number in 0.000001..0.999999999, given 1');
    expect(() => new Calibrator({ ...OPTS, target: Number.NaN })).toThrow('calibration option target must be a number in 0..1, given NaN');
  });

  it('only observes when learning is off: figures are kept, plans are not touched', () => {
    const h = new Harness(new Calibrator({ ...OPTS, learn: false }));
    for (let i = 0; i < 30; i++) expect(h.outcome(false, { stepMs: 2000 })).toBe(false);
    expect(h.placement).toBe('CCS');
    expect(h.cal.adjustments('dev')).toBeUndefined();
    expect(h.observed).toMatchObject({ outcomes: 30, planOutcomes: 30, attainment: 0, safetyFactor: 1 });
  });
});

describe('Calibrator: a correction that depends on the placement', () => {
  it('does not swing the plan back and forth when only client-heavy placements are slower than predicted', () => {
    // the device is slower than it reports: CCS takes 1.6x its prediction, CSS exactly its
    // prediction. Every generation meets its SLA, so only the correction factor acts. A factor
    // that followed the placement in force would move CCS -> CSS, decay to 1 on CSS' outcomes,
    // move back to CCS, and so on every few outcomes.
    const h = new Harness(new Calibrator(OPTS));
    const changes: number[] = [];
    let last = h.placement;
    const start = h.now;
    for (let i = 0; i < 2400; i++) {
      // 120 s, an outcome every 50 ms
      h.outcome(true, { ratio: h.placement === 'CCS' ? 1.6 : 1, stepMs: 50 });
      if (h.placement !== last) {
        changes.push(h.now - start);
        last = h.placement;
      }
    }
    expect(h.history.slice(0, 2)).toEqual(['CCS', 'CSS']);
    for (let i = 1; i < changes.length; i++) expect(changes[i] - changes[i - 1]).toBeGreaterThanOrEqual(OPTS.dwellMs);
    // CCS is retried (the factor lowered, like a relax) ever more rarely: each stay on CSS lasts
    // about twice the one before (3, 6, 12, 24, 48 s), so the last minute holds at most 3 changes
    const staysOnCss = changes
      .slice(0, -1)
      .filter((_, i) => h.history[i + 1] === 'CSS')
      .map((t) => changes[changes.indexOf(t) + 1] - t);
    expect(staysOnCss.length).toBeGreaterThanOrEqual(3);
    for (let i = 1; i < staysOnCss.length; i++) expect(staysOnCss[i]).toBeGreaterThanOrEqual(staysOnCss[i - 1] * 1.8);
    expect(changes.filter((t) => t > 60_000).length).toBeLessThanOrEqual(3);
  });
});

describe('Calibrator: TTFT and TPOT corrected per kind of placement', () => {
  /** A good outcome of `placement` at `nowMs`, TTFT and TPOT measured at `ratio` × predicted 50 and 7 ms. */
  const outcome = (placement: string, ratio: number, tpotRatio = ratio): ValidOutcome => ({
    clientId: 'dev',
    requestClass: 'short',
    placement,
    planEpoch: 1,
    ok: true,
    good: true,
    predicted: { e2e: 100, ttft: 50, tpot: 7 },
    measured: { e2e: 100, ttft: 50 * ratio, tpot: 7 * tpotRatio },
    unixMs: 0,
  });
  const kinds = (cal: Calibrator) => cal.adjustments('dev')?.('short')?.kinds;

  it("learns each kind's factors from its own outcomes only, from minOutcomes on, and re-plans when they move", () => {
    const cal = new Calibrator(OPTS);
    let now = 0;
    const replans: boolean[] = [];
    for (let i = 0; i < OPTS.minOutcomes; i++) replans.push(cal.record(outcome('CCSSSS', 1, 1.25), (now += 100)).replan);
    expect(replans).toEqual([...Array<boolean>(OPTS.minOutcomes - 1).fill(false), true]);
    expect(kinds(cal)).toEqual({ split: { ttft: 1, tpot: expect.closeTo(1.25, 9) } });
    expect(cal.observations('dev', ['short'])[0].kindCorrections).toEqual([{ kind: 'split', ttft: 1, tpot: expect.closeTo(1.25, 9) }]);
    // They are the client's: a class with no outcome of its own is planned with them too.
    expect(cal.adjustments('dev')!('long')).toEqual({ slaScale: 1, allServer: false, kinds: { split: { ttft: 1, tpot: expect.closeTo(1.25, 9) } } });
    // All-server outcomes as predicted leave the split's factor where it is and add no kind of their own.
    for (let i = 0; i < 20; i++) expect(cal.record(outcome('SSSSSS', 1), (now += 100)).replan).toBe(false);
    expect(kinds(cal)).toEqual({ split: { ttft: 1, tpot: expect.closeTo(1.25, 9) } });
    // All-device outcomes slower than predicted get a factor of their own; faster ones never loosen a kind below 1.
    for (let i = 0; i < OPTS.minOutcomes; i++) cal.record(outcome('CCCCCC', 1.1), (now += 100));
    expect(kinds(cal)?.device).toEqual({ ttft: expect.closeTo(1.1, 9), tpot: expect.closeTo(1.1, 9) });
    const fast = new Calibrator(OPTS);
    for (let i = 0; i < 10; i++) fast.record(outcome('CSSSSS', 0.5), (now += 100));
    expect(kinds(fast)).toBeUndefined();
  });

  it('takes out the class-wide factor already applied, and learns nothing with byKind off', () => {
    const cal = new Calibrator({ ...OPTS, dwellMs: 0 });
    // E2E measured 1.2 × predicted moves the class factor to 1.2 (after the dwell of 0); the split's TPOT at 1.5 × is then 1.25 × beyond it.
    for (let i = 0; i < OPTS.minOutcomes; i++) {
      const o = outcome('CSSSSS', 1, 1.5);
      cal.record({ ...o, measured: { ...o.measured, e2e: 120 } }, i * 100);
    }
    // The planner must have placed the class for the class factor to move: tell it the plan.
    cal.planned('dev', [{ name: 'short', placement: 'CSSSSS' } as ClassPlacement], 1, 0);
    const o = outcome('CSSSSS', 1, 1.5);
    cal.record({ ...o, measured: { ...o.measured, e2e: 120 } }, 1000);
    expect(cal.adjustments('dev')!('short')!.slaScale).toBeCloseTo(1 / 1.2, 9);
    expect(kinds(cal)?.split?.tpot).toBeCloseTo(1.5 / 1.2, 9);
    const off = new Calibrator({ ...OPTS, byKind: false });
    for (let i = 0; i < 10; i++) expect(off.record(outcome('CSSSSS', 1, 1.5), i * 100).replan).toBe(false);
    expect(kinds(off)).toBeUndefined();
  });

  it('moves a class off a split whose tokens come slower than predicted, to all-server, and keeps it there', () => {
    // Six stages, TTFT 100 / TPOT 8 ms: the device's 2 ms stages and the server's 1 ms ones give
    // a split with one stage on the device (plan-maker.spec.ts, TTFT and TPOT SLOs).
    const links = { uplink: { latencyMs: 0.2, bytesPerMs: 10_000 }, downlink: { latencyMs: 0.2, bytesPerMs: 10_000 } };
    const cls = { name: 'short', maxPromptTokens: 16, expectedNewTokens: 8, slaMs: 1000, ttftMs: 100, tpotMs: 8 };
    const six = new PlanMaker(makerOptions({ stages: SIX_STAGES, classes: [cls], slaMargin: 1 }));
    const profile = clientProfile({ clientId: 'dev', unixMs: 0, stages: sameStageTimes(6, 0.5, 2), ...links });
    const load = serverLoad({ serverId: 's', unixMs: 0, stages: sameStageTimes(6, 0.25, 1) });
    const cal = new Calibrator(OPTS);
    let epoch = 0;
    let now = 0;
    let plan: ClassPlacement[] | undefined;
    const history: string[] = [];
    const replan = () => {
      const next = six.plan(profile, load, plan, 'work', cal.adjustments('dev'))!;
      if (next[0].placement !== plan?.[0].placement) (history.push(next[0].placement), epoch++);
      plan = next;
      cal.planned('dev', next, epoch, now);
    };
    replan();
    expect(history[0]).toMatch(/C.*S|S.*C/);
    for (let i = 0; i < 200; i++) {
      const p = plan![0];
      // Splits decode at 1.3 × their predicted TPOT (over 8), all-server as predicted; TTFT as predicted.
      const tpot = p.predictedTpotMs * (/C/.test(p.placement) ? 1.3 : 1);
      const o: ValidOutcome = {
        clientId: 'dev',
        requestClass: 'short',
        placement: p.placement,
        planEpoch: epoch,
        ok: true,
        good: tpot <= 8,
        predicted: { e2e: p.predictedLatencyMs, ttft: p.predictedTtftMs, tpot: p.predictedTpotMs },
        measured: { e2e: p.predictedLatencyMs, ttft: p.predictedTtftMs, tpot },
        unixMs: now,
      };
      if (cal.record(o, (now += 100)).replan) replan();
    }
    // One move, after minOutcomes split outcomes, and none back in 20 s of good all-server outcomes.
    expect(history).toEqual([history[0], 'SSSSSS']);
    expect(cal.observations('dev', ['short'])[0].safetyFactor).toBe(1); // the per-kind factor did it, not a tighten
  });
});

describe('Calibrator: safety against missed SLOs', () => {
  it('tightens a plan whose attainment is below target, step by step until the placement changes, then to all-server', () => {
    const h = new Harness(new Calibrator(OPTS));
    // 4 misses: too few to judge
    for (let i = 0; i < 4; i++) expect(h.outcome(false, { stepMs: 500 })).toBe(false);
    expect(h.placement).toBe('CCS');
    // the fifth, 2.5 s after the plan took effect (dwell 1 s): s = 0.8 leaves CCS (72 ms budget), 0.64 moves to CSS
    expect(
      h.cal.record(
        {
          clientId: 'dev',
          requestClass: 'short',
          placement: 'CCS',
          planEpoch: h.epoch,
          ok: false,
          good: false,
          predicted: { e2e: 61, ttft: 0, tpot: 0 },
          measured: { e2e: 0, ttft: 0, tpot: 0 },
          unixMs: 0,
        },
        (h.now += 500),
      ),
    ).toEqual({
      replan: true,
      safety: { change: 'tighten', factor: 0.8, allServer: false, attainment: 0, outcomes: 5 },
    });
    h.replan();
    expect(h.placement).toBe('CSS');
    expect(h.observed.safetyFactor).toBeCloseTo(0.64, 9);
    expect(h.observed.planOutcomes).toBe(0); // a new plan in force: attainment starts again
    // the new plan must prove itself: misses right after it took effect do not tighten it
    for (let i = 0; i < 5; i++) h.outcome(false, { stepMs: 100 });
    expect(h.placement).toBe('CSS');
    // after the dwell, the next miss tightens down to the floor (0.8^6 = 0.26) and then all-server
    h.outcome(false, { stepMs: 1000 });
    expect(h.placement).toBe('SSS');
    expect(h.observed.allServer).toBe(true);
    expect(h.observed.safetyFactor).toBeCloseTo(0.8 ** 6, 9);
    // all-server missing as well before its dwell and minimum outcomes changes nothing
    for (let i = 0; i < 4; i++) expect(h.outcome(false, { stepMs: 100 })).toBe(false);
    expect(h.placement).toBe('SSS');
    // then the floor is released (the misses are not the plan's): back to the floor factor's plan
    expect(h.outcome(false, { stepMs: 1000 })).toBe(true);
    expect(h.observed.allServer).toBe(false);
    expect(h.placement).toBe('CSS');
    // which may not tighten back to all-server for relaxDwellMs × backoff (3 s × 2)
    for (let i = 0; i < 5; i++) h.outcome(false, { stepMs: 1000 });
    expect(h.placement).toBe('CSS');
    for (let i = 0; i < 3; i++) h.outcome(false, { stepMs: 1000 });
    expect(h.placement).toBe('SSS');
    expect(h.history).toEqual(['CCS', 'CSS', 'SSS', 'CSS', 'SSS']);
  });

  it('keeps all-server while it meets the target: only a floor that misses too is released', () => {
    const h = new Harness(new Calibrator(OPTS));
    for (let i = 0; i < 5; i++) h.outcome(false, { stepMs: 500 });
    for (let i = 0; i < 5; i++) h.outcome(false, { stepMs: 1000 });
    expect(h.placement).toBe('SSS');
    // 19 of 20 good (above target; 2 s, shorter than the relax dwell): all-server stays
    for (let i = 0; i < 20; i++) h.outcome(i !== 15, { stepMs: 100 });
    expect(h.placement).toBe('SSS');
    expect(h.observed.allServer).toBe(true);
  });

  it('counts toward attainment only outcomes of the plan in force', () => {
    const h = new Harness(new Calibrator(OPTS));
    h.outcome(false, { placement: 'SSS' });
    h.outcome(false, { epoch: 0 });
    expect(h.observed).toMatchObject({ outcomes: 2, planOutcomes: 0 });
    h.outcome(false);
    expect(h.observed).toMatchObject({ outcomes: 3, planOutcomes: 1, attainment: 0 });
  });

  it('takes a phased plan as a plan of its own: its prefill placement alone is another plan, and a new decode placement restarts attainment', () => {
    const cal = new Calibrator(OPTS);
    const plan = (placement: string, decodePlacement?: string): ClassPlacement[] => [
      { ...maker.plan(PROFILE, LOAD, undefined)![0], placement, ...(decodePlacement ? { decodePlacement } : {}) },
    ];
    const miss = (placement: string): ValidOutcome => ({
      clientId: 'dev',
      requestClass: 'short',
      placement,
      planEpoch: 1,
      ok: true,
      good: false,
      predicted: { e2e: 50, ttft: 0, tpot: 0 },
      measured: { e2e: 60, ttft: 0, tpot: 0 },
      unixMs: 0,
    });
    const observed = (): ClassObservations => cal.observations('dev', ['short'])[0];
    cal.planned('dev', plan('SSS', 'CCC'), 1, 0);
    cal.record(miss('SSS'), 1);
    expect(observed()).toMatchObject({ outcomes: 1, planOutcomes: 0 });
    cal.record(miss('SSS/CCC'), 2);
    expect(observed()).toMatchObject({ outcomes: 2, planOutcomes: 1 });
    cal.planned('dev', plan('SSS', 'SCC'), 2, 3);
    expect(observed()).toMatchObject({ outcomes: 2, planOutcomes: 0 });
  });

  it('relaxes one step per relax dwell once attainment recovers above target + margin, back to the original plan', () => {
    const h = new Harness(new Calibrator(OPTS));
    for (let i = 0; i < 5; i++) h.outcome(false, { stepMs: 500 });
    expect(h.placement).toBe('CSS');
    const tightenedAt = h.now;
    // good outcomes: attainment of CSS is 100 %, but nothing relaxes before 3 s since the change
    for (let i = 0; i < 25; i++) h.outcome(true, { stepMs: 100 });
    expect(h.observed.safetyFactor).toBeCloseTo(0.64, 9);
    expect(h.outcome(true, { stepMs: 600 })).toBe(true);
    expect(h.now - tightenedAt).toBeGreaterThanOrEqual(3000);
    // 0.64 / 0.8 = 0.8: a 72 ms budget, in which CCS fits again and saves the server 1 ms
    expect(h.placement).toBe('CCS');
    expect(h.observed.safetyFactor).toBeCloseTo(0.8, 9);
    // the new plan needs its own outcomes and another dwell before the last step to 1
    for (let i = 0; i < 5; i++) h.outcome(true, { stepMs: 100 });
    expect(h.observed.safetyFactor).toBeCloseTo(0.8, 9);
    for (let i = 0; i < 30; i++) h.outcome(true, { stepMs: 100 });
    expect(h.observed.safetyFactor).toBe(1);
    expect(h.history).toEqual(['CCS', 'CSS', 'CCS']);
  });

  it('does not flap on an alternating stream: met, missed, met, ... only ever tightens, one change per dwell at most', () => {
    const h = new Harness(new Calibrator(OPTS));
    const changes: number[] = [];
    let last = h.placement;
    for (let i = 0; i < 400; i++) {
      h.outcome(i % 2 === 0, { stepMs: 50 });
      if (h.placement !== last) {
        changes.push(h.now);
        last = h.placement;
      }
    }
    // attainment 50 % < 90 % on every placement: CCS -> CSS -> SSS; all-server misses too, so it
    // is released, and each return to it waits relaxDwellMs × a backoff that doubles
    expect(h.history.slice(0, 3)).toEqual(['CCS', 'CSS', 'SSS']);
    expect(h.history.slice(3).every((p, i) => p === (i % 2 === 0 ? 'CSS' : 'SSS'))).toBe(true);
    for (let i = 1; i < changes.length; i++) expect(changes[i] - changes[i - 1]).toBeGreaterThanOrEqual(OPTS.dwellMs);
    const released = changes.filter((_, i) => h.history[i + 1] === 'CSS' && i >= 2);
    const backTo = changes.filter((_, i) => h.history[i + 1] === 'SSS' && i >= 2);
    const waits = backTo.map((t, i) => t - released[i]!);
    expect(waits.length).toBeGreaterThanOrEqual(1);
    for (let i = 1; i < waits.length; i++) expect(waits[i]).toBeGreaterThanOrEqual(waits[i - 1]! * 2 - 100);
  });

  it('does not flap on bursts of misses and hits: changes that are undone wait ever longer', () => {
    const h = new Harness(new Calibrator(OPTS));
    const changes: number[] = [];
    let last = h.placement;
    const start = h.now;
    // 120 s of: 2 s of misses, then 6 s of hits, repeated 15 times (one outcome every 50 ms)
    const kinds: (string | undefined)[] = [];
    for (let i = 0; i < 2400; i++) {
      h.outcome(i % 160 >= 40, { stepMs: 50 });
      if (h.placement !== last) {
        changes.push(h.now - start);
        kinds.push(h.lastChange);
        last = h.placement;
      }
    }
    // never more than one change per dwell, and fewer changes than bursts
    for (let i = 1; i < changes.length; i++) expect(changes[i] - changes[i - 1]).toBeGreaterThanOrEqual(OPTS.dwellMs);
    expect(changes.length).toBeLessThan(15);
    // Every burst makes the plan in force miss, all-server included: so the class goes to
    // all-server, which misses in the next burst and is released, and each return from a release
    // (or a relax) waits longer than the one before.
    const backWaits = changes
      .map((t, i) => ({ wait: t - (changes[i - 1] ?? 0), after: kinds[i - 1] }))
      .filter((c) => c.after === 'release' || c.after === 'relax')
      .map((c) => c.wait);
    expect(backWaits.length).toBeGreaterThanOrEqual(2);
    for (let i = 1; i < backWaits.length; i++) expect(backWaits[i]).toBeGreaterThan(backWaits[i - 1] * 1.5);
  });

  it('doubles the relax dwell after a relax that had to be undone', () => {
    const h = new Harness(new Calibrator({ ...OPTS, relaxDwellMs: 2000 }));
    /** Sends outcomes every 100 ms until the placement becomes `to`; returns how long that took. */
    const until = (good: boolean, to: string): number => {
      const t0 = h.now;
      for (let i = 0; i < 200 && h.placement !== to; i++) h.outcome(good, { stepMs: 100 });
      expect(h.placement).toBe(to);
      return h.now - t0;
    };
    until(false, 'CSS');
    const first = until(true, 'CCS'); // relaxed after the 2 s relax dwell
    expect(first).toBeGreaterThanOrEqual(2000);
    expect(first).toBeLessThan(2500);
    until(false, 'CSS'); // the relax is undone: the backoff doubles
    const second = until(true, 'CCS');
    expect(second).toBeGreaterThanOrEqual(4000);
    expect(second).toBeLessThan(4500);
    expect(h.history).toEqual(['CCS', 'CSS', 'CCS', 'CSS', 'CCS']);
  });
});

describe('PlanMaker adjustments (the hook the calibrator drives)', () => {
  it('plans against the scaled SLA but reports the configured SLA and the model prediction', () => {
    const [plain] = maker.plan(PROFILE, LOAD, undefined)!;
    const [tight] = maker.plan(PROFILE, LOAD, undefined, 'work', () => ({ slaScale: 0.5, allServer: false }))!;
    expect(plain.placement).toBe('CCS');
    expect(tight.placement).toBe('CSS');
    expect(tight.slaMs).toBe(100);
    expect(tight.predictedLatencyMs).toBeLessThan(plain.predictedLatencyMs);
    expect(tight.predictedServerWork).toBeGreaterThan(plain.predictedServerWork);
  });

  it('places every stage on the server at the floor, whatever the solver prefers', () => {
    const [p] = maker.plan(PROFILE, LOAD, undefined, 'work', () => ({ slaScale: 1, allServer: true }))!;
    expect(p.placement).toBe('SSS');
    expect(p.feasible).toBe(true);
    expect(p.predictedServerWork).toBeCloseTo(3, 9);
  });
});
