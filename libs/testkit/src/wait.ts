import { sleep } from '@tandem/util';

/**
 * Polls `fn` until it returns a value that is not undefined/false, or throws after
 * `timeoutMs` with the last error or value. Every wait in tests is bounded by this.
 */
export async function eventually<T>(
  fn: () => T | Promise<T>,
  opts: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<Exclude<T, undefined | false>> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const intervalMs = opts.intervalMs ?? 25;
  const until = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v as Exclude<T, undefined | false>;
      last = v;
    } catch (err) {
      last = err;
    }
    if (Date.now() >= until) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`${opts.what ?? 'condition'} not met within ${timeoutMs} ms (last: ${detail})`);
    }
    await sleep(intervalMs);
  }
}

/** Resolves with `p`, or rejects after `timeoutMs` naming `what`. */
export function withTimeout<T>(p: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what} did not happen within ${timeoutMs} ms`)), timeoutMs);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}
