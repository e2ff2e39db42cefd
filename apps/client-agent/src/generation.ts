import { status } from '@grpc/grpc-js';
import { greedyToken, lastPosition } from '@tandem/model';
import type { HostTensor } from '@tandem/protocol';
import { ExecutorStatusError } from './errors';
import type { LinkEmulator, LinkEstimator } from './link';
import type { LocalStages } from './local-stages';
import { GenerateRefusedError, REFUSAL_MARGIN_MS, refusalHintOf, TOKEN_DOWN_BYTES, type RemoteSession } from './remote-session';

/** A maximal run of consecutive stages on one side: stages [begin, end). */
export interface Segment {
  readonly side: 'C' | 'S';
  readonly begin: number;
  readonly end: number;
}

/** Cuts a placement string ('C'/'S' per stage) into its runs. */
export function segmentsOf(placement: string): Segment[] {
  const out: Segment[] = [];
  for (let i = 0; i < placement.length; i++) {
    const side = placement[i] as 'C' | 'S';
    const last = out[out.length - 1];
    if (last && last.side === side) out[out.length - 1] = { ...last, end: i + 1 };
    else out.push({ side, begin: i, end: i + 1 });
  }
  return out;
}

export interface GenerationDeps {
  readonly local: LocalStages;
  /** Opens the server session lazily (only placements with an 'S' need one). */
  readonly openRemote: () => Promise<RemoteSession>;
  readonly emulator: LinkEmulator;
  readonly estimator: LinkEstimator;
  readonly vocabSize: number;
  readonly signal: AbortSignal;
  /**
   * Resuming a generation whose executor session was lost (UNAVAILABLE: the executor died,
   * restarted or drained). Absent: a lost session fails the generation.
   */
  readonly resume?: ResumeOptions;
}

/** How a generation that lost its executor session is resumed on a new one. */
export interface ResumeOptions {
  /**
   * When the generation must have ended (Date.now() ms; the caller's deadline or the agent's
   * own, whichever is earlier). No attempt starts unless it leaves {@link RESUME_MARGIN_MS}
   * before it: the generation then ends with UNAVAILABLE while its caller still listens.
   */
  readonly deadline: number;
  /** First wait before reopening, ms (default 50); doubles per failed attempt up to maxBackoffMs. */
  readonly initialBackoffMs?: number;
  /** Longest wait between attempts, ms (default 1000). */
  readonly maxBackoffMs?: number;
  /** Called each time the generation continues on a new session (for logs). */
  readonly onResumed?: (info: { tokens: number; attempts: number; lostMs: number }) => void;
}

/** Time left before the deadline at which resuming gives up, so the UNAVAILABLE reaches the caller in time, ms. */
export const RESUME_MARGIN_MS = 100;

/**
 * The generation lost its executor session and could not continue on a new one within its
 * deadline. Carries gRPC's UNAVAILABLE like the executor's own errors, so the agent passes it through.
 */
export class ExecutorLostError extends ExecutorStatusError {
  override name = 'ExecutorLostError';
  constructor(details: string) {
    super(status.UNAVAILABLE, details);
  }
}

/**
 * Whether `err` means the session (not the request) is gone: the executor is unreachable,
 * died, restarted or drained (UNAVAILABLE), or ended the stream without a status.
 */
export function isSessionLost(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | undefined;
  return e?.code === status.UNAVAILABLE || (err instanceof Error && e?.code === undefined && err.message === 'the executor ended the session');
}

const sleep = (ms: number, signal: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });

/** The retry state of one generation: how many sessions it lost, and the backoff before the next attempt. */
class Resumer {
  /** Sessions replaced after a loss (each counted when the new one opened). */
  resumes = 0;
  private attempts = 0;
  private lostAt = 0;
  private lost = false;

  constructor(
    private readonly opts: ResumeOptions | undefined,
    private readonly signal: AbortSignal,
  ) {}

  /**
   * After `err` ended the session at `tokens` tokens: rethrows it when it is not a lost
   * session (or resuming is off, or the generation was aborted); otherwise waits out the
   * backoff, or throws ExecutorLostError when the deadline leaves no room for another attempt.
   */
  async afterFailure(err: unknown, tokens: number): Promise<void> {
    const o = this.opts;
    if (!o || this.signal.aborted || !isSessionLost(err)) throw err;
    if (!this.lost) {
      this.lost = true;
      this.lostAt = performance.now();
    }
    const delay = Math.min(o.maxBackoffMs ?? 1000, (o.initialBackoffMs ?? 50) * 2 ** this.attempts);
    this.attempts++;
    const left = o.deadline - Date.now();
    if (left < delay + RESUME_MARGIN_MS) {
      const e = err as { details?: string; message?: string };
      throw new ExecutorLostError(
        `the executor session was lost after ${tokens} generated tokens and could not be resumed within the deadline ` +
          `(${this.attempts} attempts over ${Math.round(performance.now() - this.lostAt)} ms, ${Math.max(0, Math.round(left))} ms left); last error: ${e.details ?? e.message ?? String(err)}`,
      );
    }
    await sleep(delay, this.signal);
  }

  /** A session opened: when it replaces a lost one, counts the resume. */
  opened(tokens: number): void {
    if (!this.lost) return;
    this.resumes++;
    this.opts?.onResumed?.({ tokens, attempts: this.attempts, lostMs: performance.now() - this.lostAt });
    this.lost = false;
    this.attempts = 0;
  }
}

export interface GenerationStats {
  readonly ids: number[];
  readonly ttftMs: number;
  readonly totalMs: number;
  readonly serverComputeMs: number;
  /** Time the server's steps waited for its engine, summed, ms. */
  readonly serverQueueMs: number;
  readonly clientComputeMs: number;
  /** Times the generation lost its executor session and continued on a new one. */
  readonly resumes: number;
  /**
   * Times the executor refused work of the generation with a retry hint (the client's tokens
   * per second: a split step, or a server-side generation at its start) and it was sent again after the hint.
   */
  readonly refusals: number;
}

const bytesOf = (t: HostTensor): number => t.data.byteLength;
const idsTensor = (ids: readonly number[]): HostTensor => ({ dtype: 'int64', shape: [1, ids.length], data: BigInt64Array.from(ids, (v) => BigInt(v)) });

/**
 * Greedy generation with the given placement: a prefill of the prompt, then one decode
 * step per further token. When every stage is on the server the executor decodes by itself
 * (see {@link generateOnServer}); otherwise client runs execute on `local` with this
 * generation's own KV cache and server runs go over one executor session (its cache on the
 * server), one step per crossing per token. `onToken` is called for each token as it is
 * produced. The session is ended (or cancelled, on abort or error) before this resolves.
 *
 * With `deps.resume`, a lost session (see {@link isSessionLost}) does not end the generation:
 * the local cache is cleared, a new session is opened (retried with backoff while the deadline
 * allows) and the prompt plus every token so far is prefilled again with the same placement,
 * whose token is the next one; the caller sees one stream, as from an undisturbed run.
 */
export async function generate(
  deps: GenerationDeps,
  placement: string,
  promptIds: readonly number[],
  maxNewTokens: number,
  onToken: (id: number, index: number) => void,
): Promise<GenerationStats> {
  if (/^S+$/.test(placement)) return generateOnServer(deps, promptIds, maxNewTokens, onToken);
  const segs = segmentsOf(placement);
  const last = placement.length;
  const cache = deps.local.newCache();
  let remote: RemoteSession | undefined;
  const resumer = new Resumer(deps.resume, deps.signal);
  const t0 = performance.now();
  let ttftMs = 0;
  let serverComputeMs = 0;
  let serverQueueMs = 0;
  let clientComputeMs = 0;
  /** Step refusals of the sessions this generation lost (the current one counts its own). */
  let stepRefusals = 0;
  const ids: number[] = [];
  const onAbort = (): void => remote?.cancel();
  deps.signal.addEventListener('abort', onAbort);
  try {
    let tokens: readonly number[] = promptIds;
    /** Whether the caches must be rebuilt by a prefill of the whole history (after a lost session). */
    let refill = false;
    while (ids.length < maxNewTokens) {
      deps.signal.throwIfAborted();
      if (refill) {
        // The lost session took the server's cache; the local one may hold part of the interrupted token.
        cache.clear();
        tokens = [...promptIds, ...ids];
        refill = false;
      }
      let x: HostTensor | number = idsTensor(tokens);
      try {
        for (const seg of segs) {
          if (typeof x === 'number') throw new Error('a token came back before the last stage');
          if (seg.side === 'C') {
            for (let s = seg.begin; s < seg.end; s++) {
              // Only the head answers with a token (a replayed one), and it is the last stage.
              if (typeof x === 'number') throw new Error('a token came back before the last stage');
              // Only the next token is needed: the (position-wise) head runs on the last position alone.
              if (s === last - 1 && x.dtype === 'float32') x = lastPosition(x);
              const r = await deps.local.run(s, x, cache);
              clientComputeMs += r.ms;
              x = r.output;
            }
          } else {
            if (!remote) {
              remote = await deps.openRemote();
              resumer.opened(ids.length);
            }
            const input: HostTensor = x;
            const sent = performance.now();
            await deps.emulator.uplink(bytesOf(input));
            const r = await remote.step(seg.begin, seg.end, input, seg.end === last);
            await deps.emulator.downlink(r.downBytes);
            serverComputeMs += r.computeMs;
            serverQueueMs += r.queueMs;
            // Network time as the device sees it, emulated delays included.
            deps.estimator.recordTransfer(bytesOf(input), r.downBytes, performance.now() - sent - r.computeMs - r.queueMs);
            x = r.output;
          }
        }
      } catch (err) {
        // Only a generation that had a session resumes: a first open that fails ends it at once.
        if (!remote) throw err;
        stepRefusals += remote.refusals;
        remote.cancel();
        remote = undefined;
        refill = true;
        for (;;) {
          await resumer.afterFailure(err, ids.length);
          try {
            remote = await deps.openRemote();
            resumer.opened(ids.length);
            break;
          } catch (openErr) {
            err = openErr;
          }
        }
        continue;
      }
      const next: number = typeof x === 'number' ? x : greedyToken(x as { data: Float32Array }, deps.vocabSize);
      if (ids.length === 0) ttftMs = performance.now() - t0;
      onToken(next, ids.length);
      ids.push(next);
      tokens = [next];
    }
    const refusals = stepRefusals + (remote?.refusals ?? 0);
    remote?.end();
    return { ids, ttftMs, totalMs: performance.now() - t0, serverComputeMs, serverQueueMs, clientComputeMs, resumes: resumer.resumes, refusals };
  } catch (err) {
    remote?.cancel();
    throw err;
  } finally {
    deps.signal.removeEventListener('abort', onAbort);
    cache.clear();
  }
}

/**
 * An all-server generation, decoded by the executor itself: the prompt crosses the uplink
 * once, then each token crosses the downlink as it is made. The emulated downlink delay of
 * each token starts when that token arrives, so the delays overlap (tokens are pipelined on
 * the link, as on a real one) instead of adding up; tokens are still delivered in order.
 * No round trip per token. Aborting `deps.signal` cancels the stream. With `deps.resume`, a
 * lost session is replaced by a new one that decodes on from the prompt plus every token
 * received so far (tokens still on the emulated link are delivered as they were). A
 * generation the executor refuses at its start with a retry hint (RESOURCE_EXHAUSTED with the
 * trailer `retry-after-ms`: the client's tokens per second) is sent again on a new session
 * after the hint while its session's deadline leaves room (as a refused split step is, see
 * RemoteSession.step); otherwise it ends at once with GenerateRefusedError (RESOURCE_EXHAUSTED,
 * the executor's message).
 */
async function generateOnServer(
  deps: GenerationDeps,
  promptIds: readonly number[],
  maxNewTokens: number,
  onToken: (id: number, index: number) => void,
): Promise<GenerationStats> {
  const t0 = performance.now();
  let remote: RemoteSession | undefined;
  const resumer = new Resumer(deps.resume, deps.signal);
  let ttftMs = 0;
  let serverComputeMs = 0;
  let serverQueueMs = 0;
  /** Tokens the executor sent (some may still be on the emulated link). */
  const received: number[] = [];
  /** Tokens delivered to `onToken`. */
  const ids: number[] = [];
  /** Set once the generation failed or was aborted: tokens still on the emulated link are dropped. */
  let stopped = false;
  /** Times the executor refused the generation at its start and it was sent again after the hint. */
  let refusals = 0;
  let deliveryError: unknown;
  const onAbort = (): void => remote?.cancel();
  deps.signal.addEventListener('abort', onAbort);
  try {
    deps.signal.throwIfAborted();
    remote = await deps.openRemote();
    resumer.opened(0);
    let delivered: Promise<unknown> = Promise.resolve();
    while (received.length < maxNewTokens) {
      deps.signal.throwIfAborted(); // an abort during open found no session to cancel
      const base = received.length;
      const prompt = idsTensor(base === 0 ? promptIds : [...promptIds, ...received]);
      const session = remote;
      if (!session) throw new Error('generateOnServer: no executor session at the start of a round (every failure path opens a new one)');
      try {
        const sent = performance.now();
        await deps.emulator.uplink(bytesOf(prompt));
        deps.signal.throwIfAborted();
        await session.generate(prompt, maxNewTokens - base, (t) => {
          const index = base + t.index;
          received.push(t.token);
          serverComputeMs += t.computeMs;
          serverQueueMs += t.queueMs;
          const onLink = deps.emulator.downlink(TOKEN_DOWN_BYTES);
          delivered = Promise.all([delivered, onLink]).then(() => {
            if (stopped || deps.signal.aborted) return;
            try {
              if (index === 0) {
                ttftMs = performance.now() - t0;
                deps.estimator.recordTransfer(bytesOf(prompt), TOKEN_DOWN_BYTES, performance.now() - sent - t.computeMs - t.queueMs);
              }
              onToken(t.token, index);
              ids.push(t.token);
            } catch (err) {
              deliveryError ??= err;
              stopped = true;
              remote?.cancel();
            }
          });
        });
      } catch (err) {
        if (deliveryError !== undefined) throw deliveryError;
        session.cancel();
        remote = undefined;
        let e: unknown = err;
        const hint = refusalHintOf(err);
        if (hint !== undefined) {
          // Refused at its start (the client's tokens per second): the refusal ended the session
          // and nothing of the generation ran. A new session tries again after the hint, when the
          // deadline leaves room; opening it fails as after a lost session (retried while
          // UNAVAILABLE within the deadline, any other error passes through).
          const left = session.deadline - Date.now();
          const { details, message } = err as { details?: string; message?: string };
          if (left < hint + REFUSAL_MARGIN_MS)
            throw new GenerateRefusedError(`${details ?? message} (the deadline is ${Math.max(0, Math.round(left))} ms away)`, hint);
          refusals++;
          await sleep(hint, deps.signal);
          e = undefined;
        }
        for (;;) {
          if (e !== undefined) await resumer.afterFailure(e, received.length);
          try {
            remote = await deps.openRemote();
            resumer.opened(received.length);
            break;
          } catch (openErr) {
            e = openErr;
          }
        }
      }
    }
    await delivered;
    if (deliveryError !== undefined) throw deliveryError;
    deps.signal.throwIfAborted();
    remote?.end();
    return { ids, ttftMs, totalMs: performance.now() - t0, serverComputeMs, serverQueueMs, clientComputeMs: 0, resumes: resumer.resumes, refusals };
  } catch (err) {
    stopped = true;
    remote?.cancel();
    throw deliveryError ?? err;
  } finally {
    deps.signal.removeEventListener('abort', onAbort);
  }
}
