/**
 * Several executors in one load test (`tandem loadtest --executors N`): which executor each
 * request ran on, and each executor's share of the requests, the goodput and the server CPU.
 *
 * The agent's Generate summary does not name the executor; the GenerationOutcome it publishes
 * over NATS (`tandem.telemetry.v1.outcome.<client>`) does (`executor_id`). The harness listens
 * to the outcomes and joins each to the request it reports, by the agent, the prompt and output
 * lengths and the times the request started and ended (the agent's against the harness's: a
 * few ms apart, one gRPC hop). A request that followed no plan has no outcome (the agent reports
 * only planned generations) and ran on the agents' fallback, their EXECUTOR_ADDR, which is the
 * first executor; so does one whose outcome names no executor (a plan without one). A request
 * that followed a plan but that no outcome joins is also counted on the first executor, and
 * counted as unmatched, so the report says how many such guesses there were.
 */
import { groupBy } from '@tandem/util';
import { completed, metSla, type RequestRecord } from './metrics';

/** Most executors one load test starts (they share the server core of this machine). */
export const MAX_EXECUTORS = 8;

/** The id (EXECUTOR_ID) of the load test's executor i (0-based). */
export const loadtestExecutorId = (i: number): string => `lt-executor-${i + 1}`;

/** How far apart an outcome's start and end may be from a request's, summed, to join them, ms. */
export const OUTCOME_JOIN_TOLERANCE_MS = 1000;

/** What the harness keeps of one GenerationOutcome. */
export interface OutcomeSeen {
  readonly clientId: string;
  readonly promptTokens: number;
  readonly newTokens: number;
  /** When the generation finished, Unix ms. */
  readonly unixMs: number;
  /** Its end-to-end latency as the agent measured it, ms. */
  readonly e2eMs: number;
  /** Empty when the agent did not know the executor's id. */
  readonly executorId: string;
}

/**
 * The records with `executorId` set (see the file comment), and how many planned requests no
 * outcome joined. A record whose Generate summary named its executor keeps it (exact); the
 * others are joined to outcomes by agent, lengths and times. `traceStartUnixMs`: the Unix time of the trace's start (records' `sentMs` are
 * from it); `agentOf`: the agent id of a device class; `fallback`: the first executor's id.
 * Each outcome joins at most one request: the pairs are taken closest first.
 */
export function attributeExecutors(
  records: readonly RequestRecord[],
  outcomes: readonly OutcomeSeen[],
  o: { readonly agentOf: (device: string) => string; readonly traceStartUnixMs: number; readonly fallback: string; readonly toleranceMs?: number },
): { records: RequestRecord[]; unmatched: number } {
  const tolerance = o.toleranceMs ?? OUTCOME_JOIN_TOLERANCE_MS;
  const key = (client: string, prompt: number, tokens: number): string => `${client}\u0000${prompt}\u0000${tokens}`;
  const byKey = new Map<string, number[]>();
  outcomes.forEach((x, i) => {
    const k = key(x.clientId, x.promptTokens, x.newTokens);
    const list = byKey.get(k);
    if (list) list.push(i);
    else byKey.set(k, [i]);
  });
  const pairs: { cost: number; record: number; outcome: number }[] = [];
  records.forEach((r, ri) => {
    if (r.executorId) return;
    const start = o.traceStartUnixMs + r.sentMs;
    const end = start + r.endMs;
    for (const oi of byKey.get(key(o.agentOf(r.device), r.promptTokens, r.tokenMs.length)) ?? []) {
      const x = outcomes[oi];
      const cost = Math.abs(x.unixMs - end) + Math.abs(x.unixMs - x.e2eMs - start);
      if (cost <= tolerance) pairs.push({ cost, record: ri, outcome: oi });
    }
  });
  pairs.sort((a, b) => a.cost - b.cost);
  const joined = new Map<number, number>();
  const taken = new Set<number>();
  for (const p of pairs) {
    if (joined.has(p.record) || taken.has(p.outcome)) continue;
    joined.set(p.record, p.outcome);
    taken.add(p.outcome);
  }
  let unmatched = 0;
  const out = records.map((r, ri) => {
    if (r.executorId) return r;
    const oi = joined.get(ri);
    if (oi === undefined && (r.planEpoch ?? 0) > 0) unmatched++;
    const id = oi === undefined ? '' : outcomes[oi].executorId;
    return { ...r, executorId: id || o.fallback };
  });
  return { records: out, unmatched };
}

/** One executor's part of one (policy, rate) cell. */
export interface ExecutorShare {
  /** Its id (EXECUTOR_ID, ServerLoad.server_id). */
  readonly id: string;
  /** Requests attributed to it (see attributeExecutors), completed ones, good ones. */
  readonly requests: number;
  readonly completed: number;
  readonly good: number;
  /** Its good requests per second over the cell's duration: the executors' goodputs add up to the cell's. */
  readonly goodput: number;
  /** Its process's CPU (user + system) over the cell, s; null for an id the harness did not start. */
  readonly serverCpuS: number | null;
  /** serverCpuS per completed request attributed to it, s (null when none completed). */
  readonly serverCpuPerRequestS: number | null;
  /** serverCpuS over the cell's wall time. */
  readonly serverCpuUtilisation: number | null;
}

/**
 * Each executor's share of a cell: one row per id in `ids` (in that order, also when no request
 * ran there), then one per other id the records name. `records` carry `executorId` (those
 * without one count on `ids[0]`); `cpuS`: each executor's CPU over the cell; `durationS`: the
 * cell's duration (RunStats.durationS); `wallS`: its wall time.
 */
export function executorShares(
  records: readonly RequestRecord[],
  ids: readonly string[],
  cpuS: ReadonlyMap<string, number>,
  durationS: number,
  wallS: number,
): ExecutorShare[] {
  const groups = groupBy(records, (r) => r.executorId ?? ids[0], new Map<string, RequestRecord[]>(ids.map((id) => [id, []])));
  return [...groups.entries()].map(([id, rs]) => {
    const done = rs.filter(completed).length;
    const cpu = cpuS.get(id);
    return {
      id,
      requests: rs.length,
      completed: done,
      good: rs.filter(metSla).length,
      goodput: rs.filter(metSla).length / Math.max(durationS, 1e-9),
      serverCpuS: cpu ?? null,
      serverCpuPerRequestS: cpu !== undefined && done > 0 ? cpu / done : null,
      serverCpuUtilisation: cpu !== undefined ? cpu / Math.max(wallS, 1e-9) : null,
    };
  });
}
