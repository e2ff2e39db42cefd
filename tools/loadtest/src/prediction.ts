/**
 * Prediction error of the planner, judged by the load test: for each completed request that
 * followed a plan, the relative error (predicted − measured) / measured of the plan's
 * predictions against what the harness measured (E2E = to the end of the stream, TTFT and
 * TPOT as in metrics.ts). Grouped per 'device/requestClass'; a group is judged when it has at
 * least {@link PREDICTION_LIMITS}.minRequests predicted requests, and a judged figure is
 * flagged when the median of |error| exceeds medianRel or its p90 exceeds p90Rel (issue 8's
 * target, stated for E2E; TTFT and TPOT are flagged by the same rule for diagnosis).
 *
 * Requests without a prediction (the all-server start-up plan, overrides) are counted in
 * `unpredicted`, never mixed in. The plan prices E2E for the class's expected output length,
 * so `e2e` also holds the spread of output lengths; `e2eAtLength` re-prices it for the length
 * the request actually produced (predicted TTFT + (tokens − 1) × predicted TPOT), which
 * separates the model's error from the length's.
 *
 * `hindsight` is the floor no per-class prediction can go below: the error of the best constant
 * known only after the fact, the measured median E2E of the requests of the same group that
 * followed the same placement, against each of them. When that floor is itself above the
 * target, the spread is in the requests (queueing behind whoever arrived just before), not in
 * the model, and only a prediction made per request, from the server's state when it is
 * admitted, could be within it.
 *
 * `recent` tests that: a prediction made per request from what the server did just before it
 * was sent, known at that moment: the median TTFT of the requests on the same placement whose
 * first token arrived in the {@link RECENT_WINDOW_MS} before, plus (tokens − 1) × the median
 * gap between their tokens in that window (the request's own length, as "E2E at length").
 * What it cannot see is what arrives after the request: when it is no better than the plan or
 * the floor, the spread comes from later arrivals, which no prediction at admission knows.
 *
 * `calibrated` tests the other correction at hand, the planner's own: each plan's E2E
 * prediction × the factor the planner's calibrator would hold for the group when the request was
 * sent, from the outcomes ended by then (the decayed geometric mean of measured / predicted; the
 * estimate itself, without the gates that delay the factor the planner applies). It removes a
 * bias that persists; it cannot remove the spread, so when it is no better than the plan the
 * error is spread, not bias.
 */
import { Decayed, DEFAULT_CALIBRATION } from '@tandem/planner';
import { groupBy } from '@tandem/util';
import { completed, percentile, tpotOf, ttftOf, type RequestRecord } from './metrics';

/** How far back the per-request `recent` prediction looks, ms. */
export const RECENT_WINDOW_MS = 2000;

/** The ≥ 20 rule and the target: median |error| ≤ 10 %, p90 ≤ 25 %. */
export const PREDICTION_LIMITS = { minRequests: 20, medianRel: 0.1, p90Rel: 0.25 } as const;

/** The figures whose prediction is judged. */
export const PREDICTED_FIGURES = ['e2e', 'e2eAtLength', 'ttft', 'tpot'] as const;
export type PredictedFigure = (typeof PREDICTED_FIGURES)[number];

/** Signed relative errors of one group's requests, per figure (the raw material; mergeable over rates). */
export interface PredictionSamples {
  /** Completed requests of the group. */
  readonly completed: number;
  /** Completed requests that carried no prediction (not in the errors). */
  readonly unpredicted: number;
  readonly errors: Readonly<Record<PredictedFigure, readonly number[]>>;
  /** E2E errors of the hindsight constant (see the top of this file), one per predicted request. */
  readonly hindsight: readonly number[];
  /** E2E errors of the per-request prediction from the recent past (see the top of this file), where the window held data. */
  readonly recent: readonly number[];
  /** E2E errors of the plan's prediction as the planner's calibrator would have corrected it (see {@link calibratedAtSend}); absent in results written before it. */
  readonly calibrated?: readonly number[];
}

/** Error statistics of one figure over a group. */
export interface ErrorStats {
  /** Requests with this figure predicted and measured. */
  readonly n: number;
  /** Median and p90 of |predicted − measured| / measured. */
  readonly medianAbs: number;
  readonly p90Abs: number;
  /** Median of (predicted − measured) / measured: below 0 the plan predicts too low (optimistic), above too high. */
  readonly signedMedian: number;
  /** n ≥ minRequests, so the figure is judged. */
  readonly judged: boolean;
  /** Judged and outside the target (median > medianRel or p90 > p90Rel); null when not judged. */
  readonly flagged: boolean | null;
}

/** One group's prediction error. */
export interface PredictionGroup {
  readonly completed: number;
  readonly predicted: number;
  readonly unpredicted: number;
  /** Per figure; null when no request of the group has it. */
  readonly figures: Readonly<Record<PredictedFigure, ErrorStats | null>>;
  /** The E2E figure is judged and flagged (the target). */
  readonly flagged: boolean | null;
  /** The error of the hindsight constant on E2E: the floor of any per-class prediction. */
  readonly hindsight: ErrorStats | null;
  /** The error on E2E of a per-request prediction from the server's recent past. */
  readonly recent: ErrorStats | null;
  /** The error on E2E of the plan's prediction corrected from the outcomes seen before each request was sent (the planner's calibrator replayed). */
  readonly calibrated: ErrorStats | null;
}

type MutableSamples = {
  completed: number;
  unpredicted: number;
  errors: Record<PredictedFigure, number[]>;
  hindsight: number[];
  recent: number[];
  calibrated: number[];
};
const emptySamples = (): MutableSamples => ({
  completed: 0,
  unpredicted: 0,
  errors: { e2e: [], e2eAtLength: [], ttft: [], tpot: [] },
  hindsight: [],
  recent: [],
  calibrated: [],
});

/**
 * The per-request prediction from the recent past (see the top of this file): for a record,
 * its E2E predicted from the TTFTs and token gaps of the requests on the same placement seen in
 * the {@link RECENT_WINDOW_MS} before it was sent; undefined when the window saw neither.
 */
function recentPast(records: readonly RequestRecord[]): (r: RequestRecord) => number | undefined {
  /** Per placement: first-token arrivals (time, TTFT) and token gaps (time of the later token, gap), each sorted by time. */
  const seen = new Map<string, { ttft: [number, number][]; gaps: [number, number][] }>();
  for (const r of records) {
    if (!completed(r) || r.tokenMs.length === 0) continue;
    const s = seen.get(r.placement ?? '') ?? { ttft: [], gaps: [] };
    seen.set(r.placement ?? '', s);
    s.ttft.push([r.sentMs + r.tokenMs[0], r.tokenMs[0]]);
    for (let i = 1; i < r.tokenMs.length; i++) s.gaps.push([r.sentMs + r.tokenMs[i], r.tokenMs[i] - r.tokenMs[i - 1]]);
  }
  for (const s of seen.values()) {
    s.ttft.sort((a, b) => a[0] - b[0]);
    s.gaps.sort((a, b) => a[0] - b[0]);
  }
  const within = (xs: [number, number][], from: number, to: number): number[] => {
    let lo = 0;
    let hi = xs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (xs[mid][0] < from) lo = mid + 1;
      else hi = mid;
    }
    const out: number[] = [];
    for (let i = lo; i < xs.length && xs[i][0] < to; i++) out.push(xs[i][1]);
    return out.sort((a, b) => a - b);
  };
  return (r) => {
    const s = seen.get(r.placement ?? '');
    if (!s) return undefined;
    const ttft = within(s.ttft, r.sentMs - RECENT_WINDOW_MS, r.sentMs);
    const gaps = within(s.gaps, r.sentMs - RECENT_WINDOW_MS, r.sentMs);
    const tokens = r.tokenMs.length;
    if (ttft.length === 0 || (tokens > 1 && gaps.length === 0)) return undefined;
    return percentile(ttft, 50) + (tokens > 1 ? (tokens - 1) * percentile(gaps, 50) : 0);
  };
}

/**
 * Each predicted request's E2E as the planner's calibrator would have corrected it when the
 * request was sent: the plan's prediction × the factor of its group from the requests of the
 * same group that had ended by then (the planner's Decayed estimate with its DEFAULT_CALIBRATION
 * half-life); the plan's own prediction while fewer than its minOutcomes have ended. Keyed by record; records without an E2E prediction are absent.
 */
function calibratedAtSend(records: readonly RequestRecord[]): Map<RequestRecord, number> {
  /** The completed requests with an E2E prediction, with it, per group. */
  const byGroup = groupBy(
    records.flatMap((r) => (completed(r) && (r.predictedE2eMs ?? 0) > 0 && r.endMs > 0 ? [{ r, predicted: r.predictedE2eMs ?? 0 }] : [])),
    (x) => `${x.r.device}/${x.r.requestClass}`,
  );
  const { halfLife, minOutcomes } = DEFAULT_CALIBRATION;
  const decay = 2 ** (-1 / halfLife);
  const out = new Map<RequestRecord, number>();
  for (const group of byGroup.values()) {
    const sent = [...group].sort((a, b) => a.r.sentMs - b.r.sentMs);
    const endOf = (x: { r: RequestRecord }): number => x.r.sentMs + x.r.endMs;
    const ended = [...group].sort((a, b) => endOf(a) - endOf(b));
    const logRatio = new Decayed();
    let next = 0;
    for (const x of sent) {
      for (; next < ended.length && endOf(ended[next]) <= x.r.sentMs; next++) logRatio.add(Math.log(ended[next].r.endMs / ended[next].predicted), decay);
      out.set(x.r, x.predicted * (logRatio.count >= minOutcomes ? Math.exp(logRatio.mean) : 1));
    }
  }
  return out;
}

/** Signed relative errors per 'device/requestClass' of a set of records. */
export function predictionSamples(records: readonly RequestRecord[]): Record<string, PredictionSamples> {
  const out: Record<string, MutableSamples> = {};
  const recentOf = recentPast(records);
  const calibratedOf = calibratedAtSend(records);
  /** E2E of the predicted requests per group and placement, for the hindsight constant. */
  const byPlacement = new Map<string, { group: string; e2e: number[] }>();
  const rel = (predicted: number | undefined, measured: number | null): number | null =>
    predicted !== undefined && predicted > 0 && measured !== null && measured > 0 ? (predicted - measured) / measured : null;
  for (const r of records) {
    if (!completed(r)) continue;
    const key = `${r.device}/${r.requestClass}`;
    const g = (out[key] ??= emptySamples());
    g.completed++;
    if (r.predictedE2eMs === undefined && r.predictedTtftMs === undefined) {
      g.unpredicted++;
      continue;
    }
    const tokens = r.tokenMs.length;
    const atLength =
      r.predictedTtftMs !== undefined && (tokens <= 1 || r.predictedTpotMs !== undefined)
        ? r.predictedTtftMs + Math.max(0, tokens - 1) * (r.predictedTpotMs ?? 0)
        : undefined;
    const add = (k: PredictedFigure, e: number | null): void => {
      if (e !== null) g.errors[k].push(e);
    };
    add('e2e', rel(r.predictedE2eMs, r.endMs));
    add('e2eAtLength', rel(atLength, r.endMs));
    add('ttft', rel(r.predictedTtftMs, ttftOf(r)));
    add('tpot', rel(r.predictedTpotMs, tpotOf(r)));
    const recent = recentOf(r);
    if (recent !== undefined && r.endMs > 0) g.recent.push((recent - r.endMs) / r.endMs);
    const calibrated = calibratedOf.get(r);
    if (calibrated !== undefined) g.calibrated.push((calibrated - r.endMs) / r.endMs);
    if (r.endMs > 0) {
      const pk = `${key}\u0000${r.placement ?? ''}`;
      const b = byPlacement.get(pk) ?? { group: key, e2e: [] };
      b.e2e.push(r.endMs);
      byPlacement.set(pk, b);
    }
  }
  for (const { group, e2e } of byPlacement.values()) {
    const median = percentile(
      [...e2e].sort((a, b) => a - b),
      50,
    );
    for (const x of e2e) out[group].hindsight.push((median - x) / x);
  }
  return out;
}

/** The union of several sample sets (e.g. every rate of a policy). */
export function mergeSamples(sets: readonly Readonly<Record<string, PredictionSamples>>[]): Record<string, PredictionSamples> {
  const out: Record<string, MutableSamples> = {};
  for (const set of sets) {
    for (const [k, s] of Object.entries(set)) {
      const g = (out[k] ??= emptySamples());
      g.completed += s.completed;
      g.unpredicted += s.unpredicted;
      g.hindsight.push(...s.hindsight);
      g.recent.push(...(s.recent ?? []));
      g.calibrated.push(...(s.calibrated ?? []));
      for (const f of PREDICTED_FIGURES) g.errors[f].push(...s.errors[f]);
    }
  }
  return out;
}

const round = (v: number): number => Math.round(v * 10_000) / 10_000;

/** Statistics of a sample of signed relative errors (null when empty). */
export function errorStats(errors: readonly number[]): ErrorStats | null {
  if (errors.length === 0) return null;
  const abs = errors.map(Math.abs).sort((a, b) => a - b);
  const signed = [...errors].sort((a, b) => a - b);
  const L = PREDICTION_LIMITS;
  const medianAbs = percentile(abs, 50);
  const p90Abs = percentile(abs, 90);
  const judged = errors.length >= L.minRequests;
  return {
    n: errors.length,
    medianAbs: round(medianAbs),
    p90Abs: round(p90Abs),
    signedMedian: round(percentile(signed, 50)),
    judged,
    flagged: judged ? medianAbs > L.medianRel || p90Abs > L.p90Rel : null,
  };
}

/** Per group: counts and each figure's statistics. Keys sorted. */
export function predictionErrors(samples: Readonly<Record<string, PredictionSamples>>): Record<string, PredictionGroup> {
  return Object.fromEntries(
    Object.entries(samples)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, s]) => {
        const figures = Object.fromEntries(PREDICTED_FIGURES.map((f) => [f, errorStats(s.errors[f])])) as Record<PredictedFigure, ErrorStats | null>;
        return [
          k,
          {
            completed: s.completed,
            predicted: s.completed - s.unpredicted,
            unpredicted: s.unpredicted,
            figures,
            flagged: figures.e2e?.flagged ?? null,
            hindsight: errorStats(s.hindsight),
            recent: errorStats(s.recent ?? []),
            calibrated: errorStats(s.calibrated ?? []),
          },
        ];
      }),
  );
}
