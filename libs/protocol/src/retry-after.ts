import type { Metadata } from '@grpc/grpc-js';

/**
 * Trailer metadata key of the retry hint an executor sends with RESOURCE_EXHAUSTED (a limit
 * that frees up: sessions, per-client sessions, KV budget, tokens per second): milliseconds,
 * a decimal integer.
 */
export const RETRY_AFTER_KEY = 'retry-after-ms';

/** The retry hint of a status's trailers, ms, or undefined when it has none (or one that is not a whole number >= 0). */
export function retryAfterMsOf(metadata: Metadata | undefined): number | undefined {
  const v = metadata?.get(RETRY_AFTER_KEY)[0];
  if (typeof v !== 'string' || !/^\d{1,10}$/.test(v)) return undefined;
  return Number(v);
}
