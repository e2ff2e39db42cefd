import type { ClassObservations, ClassPlacement } from '@tandem/protocol';
import type { LatencyTriple, ValidOutcome } from './outcomes';
import { placementKind, planKey, type PlacementKind } from '@tandem/dp';
import { median } from '@tandem/util';
import type { ClassAdjustment, KindFactors } from './plan-maker';

/** Settings of the calibrator (the planner's PLANNER_SLO_* / PLANNER_OUTCOME_* / PLANNER_SAFETY_* variables). */
export interface CalibrationOptions {
  /** Whether corrections are applied to plans; false only observes (ListPlans still shows the figures). */
  readonly learn: boolean;
  /** SLO attainment the plan in force must reach, 0..1. */
  readonly target: number;
  /** A tightened class relaxes only while its attainment is at least target + relaxMargin. */
  readonly relaxMargin: number;
  /** Half-life of the decayed statistics, in outcomes: each outcome weighs 2^(-1/halfLife) times the next. */
  readonly halfLife: number;
  /** Below this many outcomes nothing is corrected (factor 1) or judged (no tighten, no relax). */
  readonly minOutcomes: number;
  /** A tighten step multiplies the safety factor by this, 0 < step < 1; a relax step divides by it. */
  readonly step: number;
  /** Lowest safety factor; a tighten step below it places the class all-server instead. */
  readonly floor: number;
  /** A placement stays in force at least this long before it may be tightened, ms. */
  readonly dwellMs: number;
  /**
   * Time since the last change (of the placement or the safety factor) before a relax step,
   * ms; doubled after each relax that a tighten had to undo (at most 16 times), halved back
   * after each relax that held.
   */
  readonly relaxDwellMs: number;
  /** Relative change of a correction factor since the client was last planned that re-plans it. */
  readonly materialChange: number;
  /**
   * Whether TTFT and TPOT are also corrected per kind of placement (all-server, split,
   * all-device: {@link placementKind}), each kind by the client's own outcomes of that kind
   * (see `judgeKinds`).
   */
  readonly byKind: boolean;
}

/** The defaults of the planner's configuration (config.ts uses these). */
export const DEFAULT_CALIBRATION: CalibrationOptions = Object.freeze({
  learn: true,
  target: 0.9,
  relaxMargin: 0.05,
  halfLife: 20,
  minOutcomes: 5,
  step: 0.8,
  floor: 0.25,
  dwellMs: 10_000,
  relaxDwellMs: 30_000,
  materialChange: 0.05,
  byKind: true,
});

/** Successful outcomes kept per class for the medians and means that ListPlans shows. */
export const OBSERVATION_WINDOW = 32;
/** A single measured/predicted ratio counts as at most this far from 1 (either way): one wild figure cannot swing the factor. */
const MAX_RATIO = 100;
/** The largest relax-dwell multiplier. */
const MAX_BACKOFF = 16;
/** Figures kept per outcome in the window: predicted and measured e2e, ttft, tpot. */
const FIGURES = 6;

/** What taking one outcome decided. */
export interface RecordResult {
  /** The client must be re-planned (a correction factor moved materially, or the safety factor changed). */
  readonly replan: boolean;
  /** The safety factor changed: the state after the change, for the planner's log. */
  readonly safety?: {
    readonly change: 'tighten' | 'relax' | 'release';
    readonly factor: number;
    readonly allServer: boolean;
    readonly attainment: number;
    readonly outcomes: number;
  };
}

/** An exponentially decayed mean, weights halving every `halfLife` samples (the load test replays the calibrator with it). */
export class Decayed {
  private weight = 0;
  private sum = 0;
  /** Samples taken (not decayed). */
  count = 0;
  add(x: number, decay: number): void {
    this.weight = this.weight * decay + 1;
    this.sum = this.sum * decay + x;
    this.count++;
  }
  /** The decayed mean; 0 when empty. */
  get mean(): number {
    return this.weight > 0 ? this.sum / this.weight : 0;
  }
  reset(): void {
    this.weight = 0;
    this.sum = 0;
    this.count = 0;
  }
}

const TERMS = ['e2e', 'ttft', 'tpot'] as const;
type Term = (typeof TERMS)[number];
/** The terms corrected per kind of placement: e2e has its class-wide factor (`appliedE2e`). */
const KIND_TERMS = ['ttft', 'tpot'] as const;
const KINDS: readonly PlacementKind[] = ['server', 'split', 'device'];

type KindTerm = (typeof KIND_TERMS)[number];

/** What the planner knows of one client's kinds of placement, over all its request classes (see `Calibrator.kindsOf`). */
class ClientKinds {
  /** Decayed mean of ln(measured / predicted) TTFT and TPOT, per kind of placement the outcome ran. */
  readonly logRatio: Record<PlacementKind, Record<KindTerm, Decayed>> = {
    server: { ttft: new Decayed(), tpot: new Decayed() },
    split: { ttft: new Decayed(), tpot: new Decayed() },
    device: { ttft: new Decayed(), tpot: new Decayed() },
  };
  /** The factors in force (planned with), before the class-wide factor is taken out; a kind or term absent is 1. */
  applied: Partial<Record<PlacementKind, Partial<Record<KindTerm, number>>>> = {};
}

/** What the planner knows of one client's request class. */
class ClassState {
  /** Decayed mean of ln(measured / predicted), per term, over outcomes carrying that prediction. */
  readonly logRatio: Record<Term, Decayed> = { e2e: new Decayed(), ttft: new Decayed(), tpot: new Decayed() };
  /** Decayed fraction of the plan in force's outcomes that met every stated SLO. */
  readonly attainment = new Decayed();
  outcomes = 0;
  failures = 0;
  /** The class's placement in force, as last planned ({@link planKey}); undefined before the first plan. */
  placement: string | undefined;
  /** Epoch of the plan in which `placement` took effect: older outcomes are of another plan. */
  sinceEpoch = 0;
  sinceMs = 0;
  /** Safety factor on the SLA, in [floor, 1]. */
  safety = 1;
  allServer = false;
  /** A tighten step is being searched: step again while the placement does not change. */
  searching = false;
  /** Last change of the placement or of the safety factor, ms; 0 = never. */
  lastChangeMs = 0;
  safetyChangedMs = 0;
  lastDirection: 'tighten' | 'relax' | undefined;
  backoff = 1;
  /** The all-server floor missed too and was released: no tighten step goes back to it before this time, ms. */
  floorBlockedUntilMs = 0;
  /** The e2e correction factor in force (planned with); moves toward the estimate by the rule of `judgeFactor`. */
  appliedE2e = 1;
  /** Ring of the last OBSERVATION_WINDOW successful outcomes' figures, allocated on the first one. */
  ring: Float64Array | undefined;
  ringNext = 0;
  ringSize = 0;
}

/**
 * The planner's memory of what its plans did: per client and request class, from the
 * outcomes the agents publish, (a) how far its predictions are off and (b) how well the plan
 * in force meets its SLOs, and the two corrections it derives (docs/planner.md):
 *
 * - **Correction factor** per latency term (e2e; ttft and tpot when plans predict them): the
 *   estimate is the decayed geometric mean of measured / predicted, half-life `halfLife`
 *   outcomes; with fewer than `minOutcomes` outcomes carrying a prediction it is 1: the model's
 *   prediction stands. The planner plans against SLA / factor in force, which is the same as
 *   scaling its predicted latencies by it; the plans it publishes keep the model's own
 *   (uncorrected) predictions, so the ratio keeps measuring the model and does not chase its
 *   own correction. The factor in force follows the estimate under the gates of the safety
 *   factor (`judgeFactor`): up like a tighten, down like a relax. The class-wide factor applied
 *   is e2e's (on every stated SLO); TTFT and TPOT are applied per kind of placement.
 * - **Per-kind factors** on TTFT and TPOT (`byKind`), per client over all its classes, by kind
 *   of placement (all-server, split, all-device): a plan of a kind must meet the SLOs with its
 *   predictions × its kind's factors (`judgeKinds`, `kindFactors`).
 * - **Safety factor** s in [floor, 1] on the class's SLA, and at the floor all-server. The rule:
 *   - *tighten* when the plan in force (this placement, since it took effect) has at least
 *     `minOutcomes` outcomes, its decayed attainment is below `target`, it has been in force
 *     for at least `dwellMs`, and it is not all-server already: s ← s·step, and again while the
 *     re-planned placement stays the same, until it changes; below `floor` the class goes
 *     all-server.
 *   - *relax* when the attainment of the plan in force is at least `target + relaxMargin` with
 *     at least `minOutcomes` outcomes, and nothing changed for `relaxDwellMs` × backoff: one
 *     step back (all-server off, or s ← min(1, s/step)). A relax undone by a tighten doubles
 *     the backoff (≤ 16); a relax that holds until the next relax halves it.
 *   - no flapping: attainment restarts with every placement change, a placement is never
 *     tightened before `dwellMs` and `minOutcomes` outcomes of its own, and between the
 *     tighten threshold (target) and the relax one (target + margin) nothing moves. So
 *     outcomes change a class's placement at most once per min(`dwellMs`, `relaxDwellMs`), a
 *     stream whose attainment stays
 *     below target only tightens (toward all-server, never back), and a plan that misses
 *     after each relax is retried ever more rarely.
 *
 * Pure state machine: time comes in as arguments (tests inject it), no timers, no I/O.
 * Memory: one ClassState per (client, class), with a 32-outcome ring once outcomes come.
 */
export class Calibrator {
  private readonly clients = new Map<string, Map<string, ClassState>>();
  private readonly kinds = new Map<string, ClientKinds>();
  private readonly decay: number;

  /** @throws RangeError naming the option when one is out of its range. */
  constructor(readonly opts: CalibrationOptions) {
    const ranges: [keyof CalibrationOptions, number, number][] = [
      ['target', 0, 1],
      ['relaxMargin', 0, 1],
      ['halfLife', 1e-6, Infinity],
      ['minOutcomes', 1, Infinity],
      ['step', 1e-6, 1 - 1e-9],
      ['floor', 1e-6, 1],
      ['dwellMs', 0, Infinity],
      ['relaxDwellMs', 0, Infinity],
      ['materialChange', 0, Infinity],
    ];
    for (const [k, min, max] of ranges) {
      const v = opts[k] as number;
      if (typeof v !== 'number' || !(v >= min && v <= max))
        throw new RangeError(`calibration option ${k} must be a number in ${min}..${max}, given ${String(v)}`);
    }
    this.decay = 2 ** (-1 / opts.halfLife);
  }

  private state(clientId: string, requestClass: string): ClassState {
    let m = this.clients.get(clientId);
    if (!m) this.clients.set(clientId, (m = new Map()));
    let st = m.get(requestClass);
    if (!st) m.set(requestClass, (st = new ClassState()));
    return st;
  }

  /** The estimated correction factor of one term: 1 until there are `minOutcomes` ratios. */
  private correction(st: ClassState, term: Term): number {
    const d = st.logRatio[term];
    return d.count >= this.opts.minOutcomes ? Math.exp(d.mean) : 1;
  }

  /**
   * Takes one validated outcome at time `nowMs`. Says whether the client should be
   * re-planned: its correction factor moved materially from the one it was planned with, or
   * its safety factor changed (then also how). O(1).
   */
  record(o: ValidOutcome, nowMs: number): RecordResult {
    const st = this.state(o.clientId, o.requestClass);
    st.outcomes++;
    if (!o.ok) st.failures++;
    if (o.ok) {
      for (const t of TERMS) {
        if (o.predicted[t] > 0 && o.measured[t] > 0) {
          const r = Math.min(Math.max(o.measured[t] / o.predicted[t], 1 / MAX_RATIO), MAX_RATIO);
          st.logRatio[t].add(Math.log(r), this.decay);
        }
      }
      const byKind = this.kindsOf(o.clientId).logRatio[placementKind(o.placement)];
      for (const t of KIND_TERMS) {
        if (o.predicted[t] > 0 && o.measured[t] > 0) {
          const r = Math.min(Math.max(o.measured[t] / o.predicted[t], 1 / MAX_RATIO), MAX_RATIO);
          byKind[t].add(Math.log(r), this.decay);
        }
      }
      this.remember(st, o.predicted, o.measured);
    }
    if (st.placement !== undefined && o.placement === st.placement && o.planEpoch >= st.sinceEpoch) {
      st.attainment.add(o.good ? 1 : 0, this.decay);
    }
    const change = this.judge(st, nowMs);
    const moved = this.judgeFactor(st, nowMs);
    const kinds = this.judgeKinds(this.kindsOf(o.clientId));
    if (!change) return { replan: moved || kinds };
    return { replan: true, safety: { change, factor: st.safety, allServer: st.allServer, attainment: st.attainment.mean, outcomes: st.attainment.count } };
  }

  /**
   * Moves the e2e correction factor in force to the estimate when they differ by more than
   * `materialChange`, under the same gates as the safety factor, because the estimate mixes
   * outcomes of every placement (a device slower than it reports makes client-heavy placements
   * err more than all-server ones, and a factor that followed the placement in force would
   * swing the plan back and forth): a raise (plan tighter) once the placement in force has been
   * in force for `dwellMs`; a lowering (plan looser) like a relax: attainment of the plan in
   * force at least target + margin over `minOutcomes`, and `relaxDwellMs` × backoff since the
   * last change. A raise after a lowering doubles the backoff. Returns whether it moved.
   */
  private judgeFactor(st: ClassState, nowMs: number): boolean {
    const o = this.opts;
    if (!o.learn || st.placement === undefined) return false;
    const c = this.correction(st, 'e2e');
    if (Math.abs(Math.log(c / st.appliedE2e)) <= Math.log1p(o.materialChange)) return false;
    if (c > st.appliedE2e) {
      if (nowMs - st.sinceMs < o.dwellMs) return false;
      if (st.lastDirection === 'relax') st.backoff = Math.min(MAX_BACKOFF, st.backoff * 2);
      st.lastDirection = 'tighten';
    } else {
      if (st.attainment.count < o.minOutcomes || st.attainment.mean < o.target + o.relaxMargin || nowMs - st.lastChangeMs < o.relaxDwellMs * st.backoff)
        return false;
      if (st.lastDirection === 'relax') st.backoff = Math.max(1, st.backoff / 2);
      st.lastDirection = 'relax';
    }
    st.appliedE2e = c;
    st.lastChangeMs = nowMs;
    return true;
  }

  private kindsOf(clientId: string): ClientKinds {
    let k = this.kinds.get(clientId);
    if (!k) this.kinds.set(clientId, (k = new ClientKinds()));
    return k;
  }

  /**
   * The per-kind TTFT and TPOT factors in force move to the estimates (for each kind and term
   * with `minOutcomes` outcomes carrying that prediction, the decayed geometric mean of measured
   * / predicted over the client's outcomes of that kind, every request class together) when one
   * moved by more than `materialChange`. Returns whether they did (the client is re-planned).
   * Why per kind: one client's all-server plans and its splits err differently (on the edge load
   * test at low load, splits decoded at 1.3 × their predicted TPOT, all-server generations at
   * 0.9–1.0 ×), and a split is entered for a few requests at a time, so a class-wide factor mixes
   * the two and catches the splits' error late. Why per client rather than per class: what a
   * kind misses by is the device's and its link's (a late step, a wait behind another call), the
   * same for every class, and pooled it is learned from a few of the client's splits, whatever
   * their class. A kind's factors move only with outcomes of that kind: a split its factors rule
   * out is not retried on this evidence alone, and the outcomes of the kind chosen instead do not
   * swing it back (no flapping between kinds).
   */
  private judgeKinds(k: ClientKinds): boolean {
    if (!this.opts.learn || !this.opts.byKind) return false;
    const next: ClientKinds['applied'] = {};
    for (const kind of KINDS) {
      for (const t of KIND_TERMS) {
        const d = k.logRatio[kind][t];
        if (d.count >= this.opts.minOutcomes) (next[kind] ??= {})[t] = Math.exp(d.mean);
      }
    }
    const far = (a = 1, b = 1): boolean => Math.abs(Math.log(a / b)) > Math.log1p(this.opts.materialChange);
    const moved = KINDS.some((kind) => KIND_TERMS.some((t) => far(next[kind]?.[t], k.applied[kind]?.[t])));
    if (moved) k.applied = next;
    return moved;
  }

  /**
   * The per-kind factors a class is planned with (ClassAdjustment.kinds): the client's factors
   * in force divided by the class's e2e factor in force (its SLOs are already scaled by that),
   * where that leaves more than 1, so a kind is never planned looser than the class-wide factor.
   */
  private kindFactors(k: ClientKinds | undefined, appliedE2e: number): KindFactors | undefined {
    if (!k || !this.opts.byKind) return undefined;
    const out: { -readonly [K in PlacementKind]?: { ttft: number; tpot: number } } = {};
    for (const kind of KINDS) {
      const f = { ttft: Math.max(1, (k.applied[kind]?.ttft ?? 1) / appliedE2e), tpot: Math.max(1, (k.applied[kind]?.tpot ?? 1) / appliedE2e) };
      if (f.ttft > 1 || f.tpot > 1) out[kind] = f;
    }
    return Object.keys(out).length > 0 ? out : undefined;
  }

  /** Tightens or relaxes the safety factor by the rule in the class comment. Returns the change made, if any. */
  private judge(st: ClassState, nowMs: number): 'tighten' | 'relax' | 'release' | undefined {
    const o = this.opts;
    if (!o.learn || st.placement === undefined || st.searching || st.attainment.count < o.minOutcomes) return undefined;
    const a = st.attainment.mean;
    if (a < o.target) {
      if (nowMs - st.sinceMs < o.dwellMs) return undefined;
      // Nothing on the client: the floor missing as well is released, any other all-server plan stays.
      if (!/C/.test(st.placement)) return st.allServer ? this.release(st, nowMs) : undefined;
      if (!this.stepDown(st, nowMs)) return undefined;
      if (st.lastDirection === 'relax') st.backoff = Math.min(MAX_BACKOFF, st.backoff * 2);
      st.lastDirection = 'tighten';
      st.searching = true;
      return 'tighten';
    }
    if (a >= o.target + o.relaxMargin && (st.safety < 1 || st.allServer) && nowMs - st.lastChangeMs >= o.relaxDwellMs * st.backoff) {
      if (st.allServer) st.allServer = false;
      else st.safety = st.safety / o.step > 1 - 1e-9 ? 1 : st.safety / o.step;
      if (st.lastDirection === 'relax') st.backoff = Math.max(1, st.backoff / 2);
      st.lastDirection = 'relax';
      st.lastChangeMs = st.safetyChangedMs = nowMs;
      return 'relax';
    }
    return undefined;
  }

  /**
   * The all-server floor misses too: the misses are the server's (overloaded) or the SLO's (out
   * of anyone's reach), not the plan's, and holding every such class all-server only adds to the
   * server's load. Releases it, and keeps it released for relaxDwellMs × backoff (doubled).
   */
  private release(st: ClassState, nowMs: number): 'release' {
    st.backoff = Math.min(MAX_BACKOFF, st.backoff * 2);
    st.allServer = false;
    st.floorBlockedUntilMs = nowMs + this.opts.relaxDwellMs * st.backoff;
    st.lastChangeMs = st.safetyChangedMs = nowMs;
    return 'release';
  }

  /** One tighten step: s·step, or all-server once that would go below the floor. False when already all-server, or the floor is blocked after a release. */
  private stepDown(st: ClassState, nowMs: number): boolean {
    if (st.safety * this.opts.step >= this.opts.floor - 1e-12) st.safety *= this.opts.step;
    else if (!st.allServer && nowMs >= st.floorBlockedUntilMs) st.allServer = true;
    else return false;
    st.lastChangeMs = st.safetyChangedMs = nowMs;
    return true;
  }

  private remember(st: ClassState, p: LatencyTriple, m: LatencyTriple): void {
    st.ring ??= new Float64Array(OBSERVATION_WINDOW * FIGURES);
    st.ring.set([p.e2e, m.e2e, p.ttft, m.ttft, p.tpot, m.tpot], st.ringNext * FIGURES);
    st.ringNext = (st.ringNext + 1) % OBSERVATION_WINDOW;
    st.ringSize = Math.min(OBSERVATION_WINDOW, st.ringSize + 1);
  }

  /** The corrections to plan one client with, per request class (undefined when learning is off or nothing is known). */
  adjustments(clientId: string): ((requestClass: string) => ClassAdjustment | undefined) | undefined {
    const m = this.clients.get(clientId);
    if (!this.opts.learn || !m) return undefined;
    const k = this.kinds.get(clientId);
    return (requestClass) => {
      const st = m.get(requestClass);
      const kinds = this.kindFactors(k, st?.appliedE2e ?? 1);
      if (!st) return kinds && { slaScale: 1, allServer: false, kinds };
      return { slaScale: st.safety / st.appliedE2e, allServer: st.allServer, ...(kinds ? { kinds } : {}) };
    };
  }

  /**
   * Tells the calibrator the placements a re-plan produced (`epoch` is the plan's, new or
   * kept). A class whose placement changed starts a new plan in force (attainment restarts).
   * A class searching a tighten step whose placement did not change takes the next step.
   * Returns true when some class stepped, so the client must be planned again.
   */
  planned(clientId: string, classes: readonly ClassPlacement[], epoch: number, nowMs: number): boolean {
    let again = false;
    for (const c of classes) {
      const st = this.state(clientId, c.name);
      const key = planKey(c);
      if (key !== st.placement) {
        st.placement = key;
        st.sinceEpoch = epoch;
        st.sinceMs = st.lastChangeMs = nowMs;
        st.attainment.reset();
        st.searching = false;
      } else if (st.searching) {
        if (this.opts.learn && this.stepDown(st, nowMs)) again = true;
        else st.searching = false;
      }
    }
    return again;
  }

  /** Forgets a client (the planner forgot it). */
  forget(clientId: string): void {
    this.clients.delete(clientId);
    this.kinds.delete(clientId);
  }

  /**
   * SLO attainment of the plans in force per request class, over every client with outcomes of
   * its plan in force: each client's attainment weighted by those outcomes, and their sum. A
   * class no client has such outcomes of is left out. O(clients × classes), for the metrics.
   */
  attainmentByClass(): Map<string, { attainment: number; outcomes: number }> {
    const sums = new Map<string, { weighted: number; outcomes: number }>();
    for (const classes of this.clients.values()) {
      for (const [name, st] of classes) {
        const n = st.attainment.count;
        if (n === 0) continue;
        const s = sums.get(name) ?? { weighted: 0, outcomes: 0 };
        s.weighted += st.attainment.mean * n;
        s.outcomes += n;
        sums.set(name, s);
      }
    }
    return new Map([...sums].map(([name, s]) => [name, { attainment: s.weighted / s.outcomes, outcomes: s.outcomes }]));
  }

  /** What was observed of one client, per class in the order of `classes` (zero counts for a class with no outcome). */
  observations(clientId: string, classes: readonly string[]): ClassObservations[] {
    const m = this.clients.get(clientId);
    const k = this.kinds.get(clientId);
    return classes.map((name) => {
      const st = m?.get(name) ?? new ClassState();
      const ring = st.ring ?? new Float64Array(0); // no ring yet: ringSize is 0
      const col = (k: number): number[] => Array.from({ length: st.ringSize }, (_, i) => ring[i * FIGURES + k]);
      const med = (k: number): number => (st.ringSize ? median(col(k)) : 0);
      const mean = (k: number): number => (st.ringSize ? col(k).reduce((a, b) => a + b, 0) / st.ringSize : 0);
      return {
        name,
        outcomes: st.outcomes,
        failures: st.failures,
        planOutcomes: st.attainment.count,
        attainment: st.attainment.mean,
        attainmentTarget: this.opts.target,
        window: st.ringSize,
        predictedE2eMedianMs: med(0),
        observedE2eMedianMs: med(1),
        predictedE2eMeanMs: mean(0),
        observedE2eMeanMs: mean(1),
        predictedTtftMedianMs: med(2),
        observedTtftMedianMs: med(3),
        predictedTpotMedianMs: med(4),
        observedTpotMedianMs: med(5),
        e2eCorrection: st.appliedE2e,
        e2eRatio: this.correction(st, 'e2e'),
        ttftCorrection: this.correction(st, 'ttft'),
        tpotCorrection: this.correction(st, 'tpot'),
        safetyFactor: st.safety,
        allServer: st.allServer,
        safetyChangedUnixMs: st.safetyChangedMs,
        kindCorrections: Object.entries(this.opts.learn ? (this.kindFactors(k, st.appliedE2e) ?? {}) : {}).map(([kind, f]) => ({ kind, ...f })),
      };
    });
  }
}
