/**
 * Per-request records and their statistics, with the definitions of vLLM's benchmark_serving:
 * TTFT = time from sending the request to its first token; TPOT = (E2E − TTFT) / (output
 * tokens − 1), per request with more than one token; ITL = every gap between consecutive
 * tokens, pooled over requests; E2E = time from sending to the last message. Percentiles
 * interpolate linearly (numpy's default). Latency percentiles are over completed requests;
 * failed or timed-out requests are counted in `requests`, `failed`, `failures` and in SLA
 * attainment (as misses), never dropped.
 *
 * Goodput (vLLM's and DistServe's): a request is good when it completed and meets every SLO
 * its class states: TTFT ≤ ttftMs, TPOT ≤ tpotMs (a one-token request has no TPOT and meets
 * it), E2E ≤ e2eMs (a scenario's `slaMs`). Attainment of each SLO is over the requests that state it, all sent.
 */
import { SLO_KEYS, type Slo, type SloMet } from '@tandem/dp';
import { groupBy } from '@tandem/util';

/** What happened to one request. */
export interface RequestRecord {
  readonly index: number;
  readonly device: string;
  readonly requestClass: string;
  readonly promptTokens: number;
  readonly maxNewTokens: number;
  /** The SLOs it is judged by. */
  readonly slo: Slo;
  /** When it was sent, ms from the start of the trace. */
  readonly sentMs: number;
  /** How late the harness sent it against the trace, ms. */
  readonly lagMs: number;
  /** 'OK' or the gRPC status name it ended with (DEADLINE_EXCEEDED for the harness's timeout). */
  readonly status: string;
  readonly error?: string;
  /** Arrival of each token, ms after sending. */
  readonly tokenMs: readonly number[];
  /** End of the stream (summary received, or the error), ms after sending. */
  readonly endMs: number;
  readonly serverComputeMs?: number;
  readonly clientComputeMs?: number;
  /** The placement it ran; a phased generation's as `prefill/decode`. */
  readonly placement?: string;
  readonly planEpoch?: number;
  /** The request class the agent's plan chose (should equal requestClass). */
  readonly plannedClass?: string;
  /**
   * The plan's predictions for the class this request followed, ms (from the summary; absent
   * when the agent followed no plan: the all-server start-up plan or an override). E2E is priced
   * for the class's expected output length; TPOT is absent when the class expects one token.
   */
  readonly predictedE2eMs?: number;
  readonly predictedTtftMs?: number;
  readonly predictedTpotMs?: number;
  /**
   * A phased generation's hand-over as its agent timed it (GenerationSummary.handover_ms: from
   * the end of the prefill until every stage's state was sent or taken, emulated link included),
   * ms; absent when nothing moved.
   */
  readonly handoverMs?: number;
  /**
   * The executor its server stages ran on (ServerLoad.server_id): the one the agent's
   * GenerationOutcome named, else the agents' fallback (their EXECUTOR_ADDR, the first
   * executor). Set by the harness (executors.ts), not the agent's summary, which names none.
   */
  readonly executorId?: string;
}

export const completed = (r: RequestRecord): boolean => r.status === 'OK';

/** TTFT of a completed request, ms (null without a token). */
export const ttftOf = (r: RequestRecord): number | null => (r.tokenMs.length > 0 ? r.tokenMs[0] : null);
/** TPOT of a completed request, ms (null with fewer than two tokens). */
export const tpotOf = (r: RequestRecord): number | null => (r.tokenMs.length > 1 ? (r.endMs - r.tokenMs[0]) / (r.tokenMs.length - 1) : null);

/** Whether a request met each stated SLO (undefined: not stated). Failed requests meet none. */
export function sloMet(r: RequestRecord): SloMet {
  const ok = completed(r);
  const out: { -readonly [K in keyof SloMet]: SloMet[K] } = {};
  if (r.slo.ttftMs !== undefined) {
    const t = ttftOf(r);
    out.ttftMs = ok && t !== null && t <= r.slo.ttftMs;
  }
  if (r.slo.tpotMs !== undefined) {
    const t = tpotOf(r);
    out.tpotMs = ok && (t === null || t <= r.slo.tpotMs);
  }
  if (r.slo.e2eMs !== undefined) out.e2eMs = ok && r.endMs <= r.slo.e2eMs;
  return out;
}

/** Good: completed and within every stated SLO (counts in goodput). */
export const metSla = (r: RequestRecord): boolean => completed(r) && Object.values(sloMet(r)).every((m) => m);

/** Attainment of a group of requests: good ones, and per SLO met / stated (null: no request states it). */
export interface Attainment {
  readonly requests: number;
  readonly good: number;
  readonly ttft: { readonly met: number; readonly stated: number } | null;
  readonly tpot: { readonly met: number; readonly stated: number } | null;
  readonly e2e: { readonly met: number; readonly stated: number } | null;
}

export function attainment(records: readonly RequestRecord[]): Attainment {
  const acc = { ttftMs: { met: 0, stated: 0 }, tpotMs: { met: 0, stated: 0 }, e2eMs: { met: 0, stated: 0 } };
  let good = 0;
  for (const r of records) {
    const m = sloMet(r);
    for (const k of SLO_KEYS) {
      if (m[k] === undefined) continue;
      acc[k].stated++;
      if (m[k]) acc[k].met++;
    }
    if (metSla(r)) good++;
  }
  const or = (x: { met: number; stated: number }): { met: number; stated: number } | null => (x.stated ? x : null);
  return { requests: records.length, good, ttft: or(acc.ttftMs), tpot: or(acc.tpotMs), e2e: or(acc.e2eMs) };
}

/** mean and percentiles of a sample; null when empty. */
export interface Dist {
  readonly n: number;
  readonly mean: number | null;
  readonly p50: number | null;
  readonly p90: number | null;
  readonly p99: number | null;
}

/** The p-th percentile (0..100) with linear interpolation between order statistics. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

export function dist(values: readonly number[]): Dist {
  const s = [...values].sort((a, b) => a - b);
  const none = s.length === 0;
  const r = (v: number): number | null => (none ? null : Math.round(v * 1000) / 1000);
  return {
    n: s.length,
    mean: r(s.reduce((a, b) => a + b, 0) / Math.max(1, s.length)),
    p50: r(percentile(s, 50)),
    p90: r(percentile(s, 90)),
    p99: r(percentile(s, 99)),
  };
}

export interface RunStats {
  readonly requests: number;
  readonly completed: number;
  readonly failed: number;
  /** Failed requests by gRPC status name. */
  readonly failures: Readonly<Record<string, number>>;
  readonly metSla: number;
  /** From the first send to the end of the last request, s (vLLM's benchmark duration). */
  readonly durationS: number;
  /** Completed requests per second. */
  readonly requestThroughput: number;
  /** Generated tokens of completed requests per second. */
  readonly outputTokenThroughput: number;
  /** Good requests (completed within every stated SLO), as a fraction of all requests sent. */
  readonly slaAttainment: number;
  /** Good requests per second. */
  readonly goodput: number;
  readonly ttftMs: Dist;
  readonly tpotMs: Dist;
  readonly itlMs: Dist;
  readonly e2eMs: Dist;
  /** Mean server compute per completed request as the executor reported it to the agents, ms. */
  readonly meanServerComputeMs: number | null;
  /** Mean client compute per completed request (with the emulated slow-down), ms. */
  readonly meanClientComputeMs: number | null;
  /** Largest lag of the harness behind the trace, ms (large values mean the harness itself was short of CPU). */
  readonly maxSendLagMs: number;
  /** Placements used, per request class: placement → count of completed requests. */
  readonly placements: Readonly<Record<string, Readonly<Record<string, number>>>>;
  /** Per 'device/requestClass': requests, good ones, the SLOs, attainment of each, E2E p50 and mean server compute (ms). */
  readonly byClass: Readonly<
    Record<string, Attainment & { readonly metSla: number; readonly slo: Slo; readonly e2eP50Ms: number | null; readonly serverComputeMs: number | null }>
  >;
  /** Attainment per device class and per request class. */
  readonly byDevice: Readonly<Record<string, Attainment>>;
  readonly byRequestClass: Readonly<Record<string, Attainment>>;
}

/** Statistics of one run of a trace. `traceDurationS` is the nominal length of the trace. */
export function summarize(records: readonly RequestRecord[], traceDurationS: number): RunStats {
  const done = records.filter(completed);
  const lastEnd = records.reduce((m, r) => Math.max(m, r.sentMs + r.endMs), 0) / 1000;
  const durationS = Math.max(traceDurationS, lastEnd, 1e-9);
  const failures: Record<string, number> = {};
  for (const r of records) if (!completed(r)) failures[r.status] = (failures[r.status] ?? 0) + 1;
  const good = records.filter(metSla).length;
  const outTokens = done.reduce((a, r) => a + r.tokenMs.length, 0);
  const itl: number[] = [];
  for (const r of done) for (let i = 1; i < r.tokenMs.length; i++) itl.push(r.tokenMs[i] - r.tokenMs[i - 1]);
  const placements: Record<string, Record<string, number>> = {};
  for (const r of done) {
    if (r.placement === undefined) continue;
    const row = (placements[r.requestClass] ??= {});
    row[r.placement] = (row[r.placement] ?? 0) + 1;
  }
  const mean = (xs: number[]): number | null => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null);
  const sortedGroups = (key: (r: RequestRecord) => string): [string, RequestRecord[]][] => [...groupBy(records, key)].sort(([a], [b]) => a.localeCompare(b));
  const byClass = Object.fromEntries(
    sortedGroups((r) => `${r.device}/${r.requestClass}`).map(([k, rs]) => {
      const ok = rs.filter(completed);
      const a = attainment(rs);
      return [
        k,
        { ...a, metSla: a.good, slo: rs[0].slo, e2eP50Ms: dist(ok.map((r) => r.endMs)).p50, serverComputeMs: mean(ok.map((r) => r.serverComputeMs ?? 0)) },
      ];
    }),
  );
  const byDevice = Object.fromEntries(sortedGroups((r) => r.device).map(([k, rs]) => [k, attainment(rs)]));
  const byRequestClass = Object.fromEntries(sortedGroups((r) => r.requestClass).map(([k, rs]) => [k, attainment(rs)]));
  return {
    requests: records.length,
    completed: done.length,
    failed: records.length - done.length,
    failures,
    metSla: good,
    durationS,
    requestThroughput: done.length / durationS,
    outputTokenThroughput: outTokens / durationS,
    slaAttainment: records.length ? good / records.length : 0,
    goodput: good / durationS,
    ttftMs: dist(done.map(ttftOf).filter((x): x is number => x !== null)),
    tpotMs: dist(done.map(tpotOf).filter((x): x is number => x !== null)),
    itlMs: dist(itl),
    e2eMs: dist(done.map((r) => r.endMs)),
    meanServerComputeMs: mean(done.map((r) => r.serverComputeMs ?? 0)),
    meanClientComputeMs: mean(done.map((r) => r.clientComputeMs ?? 0)),
    maxSendLagMs: records.reduce((m, r) => Math.max(m, r.lagMs), 0),
    placements,
    byClass,
    byDevice,
    byRequestClass,
  };
}
