import { constants } from 'node:perf_hooks';
import { gcKindOf, watchGc, type GcKind } from './gc-watch';

/** Allocates short-lived objects until `seen()` or `ms` have passed, yielding to the event loop (where observers are called) between rounds. */
async function churn(seen: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  let keep: unknown[] = [];
  while (!seen() && Date.now() < end) {
    for (let i = 0; i < 20_000; i++) keep.push({ i, s: `x${i}` });
    keep = [];
    await new Promise((r) => setImmediate(r));
  }
}

describe('gcKindOf', () => {
  it.each([
    [constants.NODE_PERFORMANCE_GC_MINOR, 'minor'],
    [constants.NODE_PERFORMANCE_GC_MAJOR, 'major'],
    [constants.NODE_PERFORMANCE_GC_INCREMENTAL, 'incremental'],
    [constants.NODE_PERFORMANCE_GC_WEAKCB, 'weakcb'],
    [-1, 'major'],
  ])('maps V8 flag %d to %s', (flag, kind) => {
    expect(gcKindOf(flag)).toBe(kind);
  });
});

describe('watchGc', () => {
  it("reports this thread's collections with their kind and duration until stopped", async () => {
    const pauses: { kind: GcKind; ms: number }[] = [];
    const stop = watchGc((kind, ms) => pauses.push({ kind, ms }));
    try {
      await churn(() => pauses.some((p) => p.kind === 'minor'), 10_000);
    } finally {
      stop();
    }
    const minor = pauses.filter((p) => p.kind === 'minor');
    expect(minor.length).toBeGreaterThan(0);
    for (const p of pauses) expect(p.ms).toBeGreaterThanOrEqual(0);
    const after = pauses.length;
    await churn(() => false, 300);
    expect(pauses.length).toBe(after);
  });
});
