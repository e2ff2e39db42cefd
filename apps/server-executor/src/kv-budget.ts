import { totalmem } from 'node:os';
import { CapacityError } from './errors';

/** Bytes of a float32 key and value row per token per attention stage: 2 × nEmbd × 4. */
export function kvBytesPerToken(nEmbd: number): number {
  return 8 * nEmbd;
}

/** Whether stage `s` of a model with `stageCount` stages holds a KV cache (block.i.attn: odd stages before the head). */
export function isAttentionStage(s: number, stageCount: number): boolean {
  return s >= 1 && s <= stageCount - 2 && (s - 1) % 2 === 0;
}

/** KV-cache bytes `tokens` more tokens add over stages [begin, end) of a model of `stageCount` stages. */
export function kvBytesOf(stageCount: number, nEmbd: number, begin: number, end: number, tokens: number): number {
  let stages = 0;
  for (let s = begin; s < end; s++) if (isAttentionStage(s, stageCount)) stages++;
  return stages * tokens * kvBytesPerToken(nEmbd);
}

/**
 * The default budget when EXECUTOR_MAX_KV_BYTES is 0: a quarter of the machine's memory
 * (weights, a fused copy of them, onnxruntime's arena and each step's transient present
 * tensors need the rest).
 */
export function defaultKvBudgetBytes(): number {
  return Math.floor(totalmem() / 4);
}

const mib = (b: number): string => `${(b / (1 << 20)).toFixed(1)} MiB`;

/**
 * The executor's KV-cache budget in bytes, shared by every session: a session reserves the
 * bytes its next step (or its whole server-side generation) will add to the cache before it
 * runs, and gives everything back when it closes. A reservation that does not fit is refused
 * with RESOURCE_EXHAUSTED (CapacityError) naming the sizes, so memory stays bounded whatever
 * the session count and context length. The count is the cache's own size (keys and values,
 * float32); each step briefly holds a second copy of one stage's cache while it runs.
 */
export class KvBudget {
  private used = 0;

  constructor(readonly limitBytes: number) {}

  get usedBytes(): number {
    return this.used;
  }

  /** Reserves `bytes` for `what` (e.g. 'step', 'generate'). @throws CapacityError when it does not fit. */
  reserve(bytes: number, what: string): void {
    if (bytes <= 0) return;
    if (this.used + bytes > this.limitBytes) {
      throw new CapacityError(
        `the KV cache must stay <= ${this.limitBytes} bytes (${mib(this.limitBytes)}, EXECUTOR_MAX_KV_BYTES); ${what} needs ${bytes} bytes more with ${this.used} in use by open sessions: retry later or with a shorter context`,
      );
    }
    this.used += bytes;
  }

  /** Whether at least `bytes` are free (admission of a new session). */
  hasRoom(bytes: number): boolean {
    return this.used + bytes <= this.limitBytes;
  }

  /** Gives back bytes reserved earlier. */
  release(bytes: number): void {
    this.used = Math.max(0, this.used - bytes);
  }
}
