import { greedyToken } from '@tandem/model';
import type { HostTensor } from '@tandem/protocol';
import type { LinkEmulator, LinkEstimator } from './link';
import type { LocalStages } from './local-stages';
import type { RemoteSession } from './remote-session';

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
  readonly clientComputeMs: number;
}

const bytesOf = (t: HostTensor): number => t.data.byteLength;

/**
 * Greedy generation with the given placement: a prefill of the prompt, then one decode
 * step per further token. Client runs execute on `local` with this generation's own KV
 * cache; server runs go over one executor session (its cache on the server). `onToken`
 * is called for each token as it is produced. The session is ended (or cancelled, on
 * abort or error) before this resolves.
 */
export async function generate(deps: GenerationDeps, placement: string, promptIds: readonly number[], maxNewTokens: number, onToken: (id: number, index: number) => void): Promise<GenerationStats> {
  const segs = segmentsOf(placement);
  const last = placement.length;
  const cache = deps.local.newCache();
  let remote: RemoteSession | undefined;
  const t0 = performance.now();
  let ttftMs = 0;
  let serverComputeMs = 0;
  let clientComputeMs = 0;
  const ids: number[] = [];
  const onAbort = (): void => remote?.cancel();
  deps.signal.addEventListener('abort', onAbort);
  try {
    let tokens: readonly number[] = promptIds;
    while (ids.length < maxNewTokens) {
      deps.signal.throwIfAborted();
      let x: HostTensor | number = { dtype: 'int64', shape: [1, tokens.length], data: BigInt64Array.from(tokens, (v) => BigInt(v)) };
      for (const seg of segs) {
        if (typeof x === 'number') throw new Error('a token came back before the last stage');
        if (seg.side === 'C') {
          for (let s = seg.begin; s < seg.end; s++) {
            const r = await deps.local.run(s, x as HostTensor, cache);
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
    return { ids, ttftMs, totalMs: performance.now() - t0, serverComputeMs, clientComputeMs };
  } catch (err) {
    remote?.cancel();
    throw err;
  } finally {
    deps.signal.removeEventListener('abort', onAbort);
    cache.clear();
  }
}
