import { greedyToken, lastPosition } from '@tandem/model';
import type { HostTensor } from '@tandem/protocol';
import type { LinkEmulator, LinkEstimator } from './link';
import type { LocalStages } from './local-stages';
import { TOKEN_DOWN_BYTES, type RemoteSession } from './remote-session';

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
}

export interface GenerationStats {
  readonly ids: number[];
  readonly ttftMs: number;
  readonly totalMs: number;
  readonly serverComputeMs: number;
  /** Time the server's steps waited for its engine, summed, ms. */
  readonly serverQueueMs: number;
  readonly clientComputeMs: number;
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
 */
export async function generate(deps: GenerationDeps, placement: string, promptIds: readonly number[], maxNewTokens: number, onToken: (id: number, index: number) => void): Promise<GenerationStats> {
  if (/^S+$/.test(placement)) return generateOnServer(deps, promptIds, maxNewTokens, onToken);
  const segs = segmentsOf(placement);
  const last = placement.length;
  const cache = deps.local.newCache();
  let remote: RemoteSession | undefined;
  const t0 = performance.now();
  let ttftMs = 0;
  let serverComputeMs = 0;
  let serverQueueMs = 0;
  let clientComputeMs = 0;
  const ids: number[] = [];
  const onAbort = (): void => remote?.cancel();
  deps.signal.addEventListener('abort', onAbort);
  try {
    let tokens: readonly number[] = promptIds;
    while (ids.length < maxNewTokens) {
      deps.signal.throwIfAborted();
      let x: HostTensor | number = idsTensor(tokens);
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
          remote ??= await deps.openRemote();
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
      const next: number = typeof x === 'number' ? x : greedyToken(x as { data: Float32Array }, deps.vocabSize);
      if (ids.length === 0) ttftMs = performance.now() - t0;
      onToken(next, ids.length);
      ids.push(next);
      tokens = [next];
    }
    remote?.end();
    return { ids, ttftMs, totalMs: performance.now() - t0, serverComputeMs, serverQueueMs, clientComputeMs };
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
 * No round trip per token. Aborting `deps.signal` cancels the stream.
 */
async function generateOnServer(deps: GenerationDeps, promptIds: readonly number[], maxNewTokens: number, onToken: (id: number, index: number) => void): Promise<GenerationStats> {
  const t0 = performance.now();
  let remote: RemoteSession | undefined;
  let ttftMs = 0;
  let serverComputeMs = 0;
  let serverQueueMs = 0;
  const ids: number[] = [];
  /** Set once the generation failed or was aborted: tokens still on the emulated link are dropped. */
  let stopped = false;
  let deliveryError: unknown;
  const onAbort = (): void => remote?.cancel();
  deps.signal.addEventListener('abort', onAbort);
  try {
    deps.signal.throwIfAborted();
    remote = await deps.openRemote();
    deps.signal.throwIfAborted(); // an abort during open found no session to cancel
    const prompt = idsTensor(promptIds);
    const sent = performance.now();
    await deps.emulator.uplink(bytesOf(prompt));
    deps.signal.throwIfAborted();
    let delivered: Promise<unknown> = Promise.resolve();
    const session = remote;
    await session.generate(prompt, maxNewTokens, (t) => {
      serverComputeMs += t.computeMs;
      serverQueueMs += t.queueMs;
      const onLink = deps.emulator.downlink(TOKEN_DOWN_BYTES);
      delivered = Promise.all([delivered, onLink]).then(() => {
        if (stopped || deps.signal.aborted) return;
        try {
          if (t.index === 0) {
            ttftMs = performance.now() - t0;
            deps.estimator.recordTransfer(bytesOf(prompt), TOKEN_DOWN_BYTES, performance.now() - sent - t.computeMs - t.queueMs);
          }
          onToken(t.token, t.index);
          ids.push(t.token);
        } catch (err) {
          deliveryError ??= err;
          stopped = true;
          session.cancel();
        }
      });
    });
    await delivered;
    if (deliveryError !== undefined) throw deliveryError;
    deps.signal.throwIfAborted();
    remote.end();
    return { ids, ttftMs, totalMs: performance.now() - t0, serverComputeMs, serverQueueMs, clientComputeMs: 0 };
  } catch (err) {
    stopped = true;
    remote?.cancel();
    throw deliveryError ?? err;
  } finally {
    deps.signal.removeEventListener('abort', onAbort);
  }
}
