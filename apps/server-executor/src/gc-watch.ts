import { constants, PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';

/**
 * Kinds of garbage-collection pause V8 reports (perf_hooks `gc` entries): minor (scavenge of
 * the young generation), major (mark-sweep-compact), incremental (a marking step) and weakcb
 * (weak callbacks).
 */
export const GC_KINDS = ['minor', 'major', 'incremental', 'weakcb'] as const;
export type GcKind = (typeof GC_KINDS)[number];

/** The kind of a perf_hooks `gc` entry's `detail.kind` (an unknown flag counts as major: it paused the thread all the same). */
export function gcKindOf(flag: number): GcKind {
  if (flag === constants.NODE_PERFORMANCE_GC_MINOR) return 'minor';
  if (flag === constants.NODE_PERFORMANCE_GC_INCREMENTAL) return 'incremental';
  if (flag === constants.NODE_PERFORMANCE_GC_WEAKCB) return 'weakcb';
  return 'major';
}

/**
 * Calls `onPause(kind, ms)` for every garbage-collection pause of the calling thread (each
 * thread has its own heap and its own observer), until the returned function is called.
 * Pauses are reported by V8 after they end, in batches, off the hot path; an observer costs
 * nothing between collections.
 */
export function watchGc(onPause: (kind: GcKind, ms: number) => void): () => void {
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) onPause(gcKindOf(kindFlag(e)), Math.max(0, e.duration));
  });
  obs.observe({ entryTypes: ['gc'] });
  return () => obs.disconnect();
}

function kindFlag(e: PerformanceEntry): number {
  const detail = (e as PerformanceEntry & { detail?: { kind?: unknown } | null }).detail;
  return typeof detail?.kind === 'number' ? detail.kind : -1;
}
