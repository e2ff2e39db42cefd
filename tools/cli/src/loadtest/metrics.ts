/**
 * Per-request records and their statistics, with the definitions of vLLM's benchmark_serving:
 * TTFT = time from sending the request to its first token; TPOT = (E2E − TTFT) / (output
 * tokens − 1), per request with more than one token; ITL = every gap between consecutive
 * tokens, pooled over requests; E2E = time from sending to the last message. Percentiles
 * interpolate linearly (numpy's default). Latency percentiles are over completed requests;
 * failed or timed-out requests are counted in `requests`, `failed`, `failures` and in SLA
 * attainment (as misses), never dropped.
 */

/** What happened to one request. */
export interface RequestRecord {
  readonly index: number;
  readonly device: string;
  readonly requestClass: string;
  readonly promptTokens: number;
  readonly maxNewTokens: number;
  readonly slaMs: number;
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
  readonly placement?: string;
  readonly planEpoch?: number;
  /** The request class the agent's plan chose (should equal requestClass). */
  readonly plannedClass?: string;
}

export const completed = (r: RequestRecord): boolean => r.status === 'OK';
/** Completed and within its SLA on end-to-end latency. */
export const metSla = (r: RequestRecord): boolean => completed(r) && r.endMs <= r.slaMs;

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
  return { n: s.length, mean: r(s.reduce((a, b) => a + b, 0) / Math.max(1, s.length)), p50: r(percentile(s, 50)), p90: r(percentile(s, 90)), p99: r(percentile(s, 99)) };
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
  /** Requests that completed within their SLA, as a fraction of all requests sent. */
  readonly slaAttainment: number;
  /** Requests per second that completed within their SLA. */
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
  /** Per 'device/requestClass': requests, SLA met, SLA, E2E p50 and mean server compute (ms). */
  readonly byClass: Readonly<Record<string, { readonly requests: number; readonly metSla: number; readonly slaMs: number; readonly e2eP50Ms: number | null; readonly serverComputeMs: number | null }>>;
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
  const groups = new Map<string, RequestRecord[]>();
  for (const r of records) {
    const k = `${r.device}/${r.requestClass}`;
    groups.set(k, [...(groups.get(k) ?? []), r]);
  }
  const byClass = Object.fromEntries([...groups.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([k, rs]) => {
    const ok = rs.filter(completed);
    return [k, { requests: rs.length, metSla: rs.filter(metSla).length, slaMs: rs[0].slaMs, e2eP50Ms: dist(ok.map((r) => r.endMs)).p50, serverComputeMs: mean(ok.map((r) => r.serverComputeMs ?? 0)) }];
  }));
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
    ttftMs: dist(done.filter((r) => r.tokenMs.length > 0).map((r) => r.tokenMs[0])),
    tpotMs: dist(done.filter((r) => r.tokenMs.length > 1).map((r) => (r.endMs - r.tokenMs[0]) / (r.tokenMs.length - 1))),
    itlMs: dist(itl),
    e2eMs: dist(done.map((r) => r.endMs)),
    meanServerComputeMs: mean(done.map((r) => r.serverComputeMs ?? 0)),
    meanClientComputeMs: mean(done.map((r) => r.clientComputeMs ?? 0)),
    maxSendLagMs: records.reduce((m, r) => Math.max(m, r.lagMs), 0),
    placements,
    byClass,
  };
}
