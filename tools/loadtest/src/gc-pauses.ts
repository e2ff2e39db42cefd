import { scrapeText, withTimeout } from '@tandem/testkit';

/** The executor's histogram of garbage-collection pauses (apps/server-executor metrics.ts). */
const METRIC = 'tandem_executor_gc_pause_duration_seconds';
/** A pause at least this long counts as long (the histogram's 10 ms bucket): a whole decode step or more. */
export const LONG_GC_PAUSE_S = 0.01;

/** One thread's pauses: how many, their total seconds, and how many took longer than {@link LONG_GC_PAUSE_S}. */
export interface ThreadPauses {
  readonly count: number;
  readonly seconds: number;
  readonly long: number;
}

/** Garbage-collection pauses of an executor's threads: its event loop and its inference thread. */
export interface GcPauses {
  readonly main: ThreadPauses;
  readonly engine: ThreadPauses;
}

const NONE: ThreadPauses = { count: 0, seconds: 0, long: 0 };

/**
 * The pauses in a Prometheus text exposition of the executor, summed over V8's kinds per thread.
 * Undefined when the exposition has no such histogram (an executor before it had one).
 */
export function gcPausesOf(text: string): GcPauses | undefined {
  const out: Record<'main' | 'engine', { count: number; seconds: number; short: number }> = {
    main: { count: 0, seconds: 0, short: 0 },
    engine: { count: 0, seconds: 0, short: 0 },
  };
  let seen = false;
  const re = new RegExp(`^${METRIC}_(sum|count|bucket)\\{([^}]*)\\} (\\S+)$`);
  for (const line of text.split('\n')) {
    const m = re.exec(line);
    if (!m) continue;
    const labels = m[2];
    const thread = /thread="(main|engine)"/.exec(labels)?.[1] as 'main' | 'engine' | undefined;
    const value = Number(m[3]);
    if (!thread || !Number.isFinite(value)) continue;
    seen = true;
    if (m[1] === 'sum') out[thread].seconds += value;
    else if (m[1] === 'count') out[thread].count += value;
    else if (labels.includes(`le="${LONG_GC_PAUSE_S}"`)) out[thread].short += value;
  }
  if (!seen) return undefined;
  const of = (t: { count: number; seconds: number; short: number }): ThreadPauses => ({ count: t.count, seconds: t.seconds, long: t.count - t.short });
  return { main: of(out.main), engine: of(out.engine) };
}

/** The pauses between two readings of the same executor (`after` − `before`). */
export function gcPausesBetween(before: GcPauses, after: GcPauses): GcPauses {
  const d = (a: ThreadPauses, b: ThreadPauses): ThreadPauses => ({ count: b.count - a.count, seconds: b.seconds - a.seconds, long: b.long - a.long });
  return { main: d(before.main, after.main), engine: d(before.engine, after.engine) };
}

/** The sum of several executors' pauses. */
export function sumGcPauses(all: readonly GcPauses[]): GcPauses {
  const add = (a: ThreadPauses, b: ThreadPauses): ThreadPauses => ({ count: a.count + b.count, seconds: a.seconds + b.seconds, long: a.long + b.long });
  return all.reduce((acc, p) => ({ main: add(acc.main, p.main), engine: add(acc.engine, p.engine) }), { main: NONE, engine: NONE });
}

/** Reads an executor's pauses from GET http://127.0.0.1:`port`/metrics; undefined when it cannot within `timeoutMs` (the run goes on without them). */
export function scrapeGcPauses(port: number, timeoutMs = 2000): Promise<GcPauses | undefined> {
  return withTimeout(scrapeText(port), timeoutMs, `GET /metrics on port ${port}`).then(gcPausesOf, () => undefined);
}
