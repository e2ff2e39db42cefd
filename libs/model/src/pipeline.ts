import type { Location, Placement } from '@tandem/dp';
import type { HostTensor } from '@tandem/protocol';
import { ModelOptionError } from './errors';
import { type Manifest, readManifest } from './manifest';
import { parsePlacement } from './placement';
import { type KvCache, StageRunner, type StageRunnerOptions, freeViews, lastPosition } from './runner';

/** Options of {@link SplitPipeline.load}: runner options applied to both sides. */
export type SplitPipelineOptions = Omit<StageRunnerOptions, 'stages'>;

/** Called after each stage with where it ran and how long the session call took (ms). */
export type StageObserver = (stage: number, side: Location, ms: number) => void;

/** Options of {@link SplitPipeline.generate}. */
export interface GenerateOptions {
  /** Number of tokens to generate (>= 0). The prompt plus these must fit in nPositions + 1. */
  readonly maxNewTokens: number;
  /** Called with each token as soon as it is chosen (index 0 is the first generated token). */
  readonly onToken?: (id: number, index: number) => void;
  /** Stop early after generating one of these ids (included in the result). Default: none. */
  readonly stopIds?: readonly number[];
  /** Per-stage timing hook. */
  readonly onStage?: StageObserver;
}

/** The pair of caches one sequence uses: one per side, each knowing only its own stages. */
export interface SplitCaches {
  readonly client?: KvCache;
  readonly server?: KvCache;
}

/** Index of the largest value of row `row` of a [rows, width] matrix (the lowest index on ties). */
export function argmaxRow(data: Float32Array, width: number, row: number): number {
  let best = 0;
  let bestV = -Infinity;
  const base = row * width;
  for (let j = 0; j < width; j++) {
    const v = data[base + j];
    if (v > bestV) {
      bestV = v;
      best = j;
    }
  }
  return best;
}

/** The greedy next token: the argmax of the last position of logits [1, T, V]. */
export function greedyToken(logits: { readonly data: Float32Array }, vocabSize: number): number {
  return argmaxRow(logits.data, vocabSize, logits.data.length / vocabSize - 1);
}

/**
 * The greedy next token of logits [1, T, V] as an int64 tensor [1, 1], the logits' memory freed
 * at once ({@link freeViews}): what an engine hands back for a sampled step, so that the logits
 * (V floats, 201 KB for GPT-2's vocabulary) never leave the thread that computed them.
 * Ownership of `logits` passes to it: its data is empty afterwards.
 */
export function sampledToken(logits: HostTensor, vocabSize: number): HostTensor {
  if (logits.dtype !== 'float32') throw new TypeError(`sampled step: the head's output must be float32 logits, given ${logits.dtype}`);
  const token = greedyToken(logits, vocabSize);
  freeViews([logits.data]);
  return { dtype: 'int64', shape: [1, 1], data: BigInt64Array.of(BigInt(token)) };
}

/**
 * The token of a sampled step's output: an engine's {@link sampledToken} (int64 [1, 1]), or the
 * greedy token of logits from an engine that returns them.
 */
export function tokenOfOutput(out: HostTensor, vocabSize: number): number {
  if (out.dtype === 'int64') return Number(out.data[out.data.length - 1]);
  return greedyToken(out, vocabSize);
}

/**
 * A one-process split: a client-side {@link StageRunner} and a server-side one (separate sessions
 * and caches) executing a placement stage by stage. At every change of side the hidden state is
 * copied, as if sent over the wire, so neither side ever sees the other's memory.
 */
export class SplitPipeline {
  private constructor(
    readonly manifest: Manifest,
    readonly placement: Placement,
    private readonly runners: { readonly client?: StageRunner; readonly server?: StageRunner },
  ) {}

  /**
   * Loads the model at `dir`, the `C` stages into a client runner and the `S` stages into a server
   * runner (a side with no stage gets no runner).
   * @param placement a `C`/`S` string or a parsed placement.
   * @throws ModelFormatError for a bad model directory; ModelOptionError for a bad placement.
   */
  static async load(dir: string, placement: string | Placement, opts: SplitPipelineOptions = {}): Promise<SplitPipeline> {
    const manifest = await readManifest(dir);
    const p = typeof placement === 'string' ? parsePlacement(placement, manifest.stages.length) : placement;
    if (p.length !== manifest.stages.length) throw new ModelOptionError('placement', `have ${manifest.stages.length} entries`, p.length);
    const on = (side: Location): number[] => p.flatMap((s, i) => (s === side ? [i] : []));
    const runners: { client?: StageRunner; server?: StageRunner } = {};
    try {
      for (const side of ['client', 'server'] as const) {
        if (on(side).length > 0) runners[side] = await StageRunner.load(dir, { ...opts, stages: on(side) });
      }
    } catch (err) {
      await Promise.all([runners.client?.close(), runners.server?.close()]);
      throw err;
    }
    return new SplitPipeline(manifest, p, runners);
  }

  /** The runner of one side (undefined when no stage runs there). */
  runner(side: Location): StageRunner | undefined {
    return this.runners[side];
  }

  /** Fresh caches for one sequence. */
  newCaches(): SplitCaches {
    return { client: this.runners.client?.newCache(), server: this.runners.server?.newCache() };
  }

  /**
   * Runs every stage once over `ids` (appended to the sequence's context) and returns the head's
   * logits [1, T', vocabSize], where T' is T, or 1 with `lastOnly` (the head is position-wise, so
   * running it on the last position alone gives that row exactly and saves the rest).
   * @throws StageInputError for ids outside the vocabulary or a context beyond nPositions.
   */
  async step(
    caches: SplitCaches,
    ids: readonly number[],
    opts: { lastOnly?: boolean; onStage?: StageObserver } = {},
  ): Promise<HostTensor & { dtype: 'float32' }> {
    let x: HostTensor = { dtype: 'int64', shape: [1, ids.length], data: BigInt64Array.from(ids, (v) => BigInt(v)) };
    let where: Location = 'client'; // the request starts on the client
    for (const [i, side] of this.placement.entries()) {
      if (side !== where) {
        x = handOver(x);
        where = side;
      }
      if (opts.lastOnly && this.manifest.stages[i].kind === 'head' && x.dtype === 'float32') x = lastPosition(x);
      const runner = this.runners[side] as StageRunner;
      const t0 = opts.onStage ? performance.now() : 0;
      x = await runner.run(i, x, caches[side] as KvCache);
      opts.onStage?.(i, side, performance.now() - t0);
    }
    // The result ends on the client.
    const out = where === 'client' ? x : handOver(x);
    return out as HostTensor & { dtype: 'float32' };
  }

  /**
   * One forward pass (prefill, no generation) over `ids` in a fresh sequence.
   * @returns logits [1, ids.length, vocabSize].
   */
  async forward(ids: readonly number[], opts: { onStage?: StageObserver } = {}): Promise<HostTensor & { dtype: 'float32' }> {
    const caches = this.newCaches();
    try {
      return await this.step(caches, ids, opts);
    } finally {
      caches.client?.clear();
      caches.server?.clear();
    }
  }

  /**
   * Greedy decoding with the KV cache: a prefill over the prompt, then one step per new token.
   * Tokens are streamed through `onToken` as they are chosen.
   * @returns the generated ids (not including the prompt).
   * @throws ModelOptionError when the prompt is empty or prompt + maxNewTokens - 1 exceeds nPositions.
   */
  async generate(prompt: readonly number[], opts: GenerateOptions): Promise<number[]> {
    const { nPositions, vocabSize } = this.manifest.config;
    if (prompt.length === 0) throw new ModelOptionError('prompt', 'have at least one token', '[]');
    if (!Number.isInteger(opts.maxNewTokens) || opts.maxNewTokens < 0) throw new ModelOptionError('maxNewTokens', 'be an integer >= 0', opts.maxNewTokens);
    if (opts.maxNewTokens > 0 && prompt.length + opts.maxNewTokens - 1 > nPositions) {
      throw new ModelOptionError(
        'maxNewTokens',
        `fit the context: prompt (${prompt.length}) + maxNewTokens - 1 <= nPositions (${nPositions})`,
        opts.maxNewTokens,
      );
    }
    const stop = new Set(opts.stopIds ?? []);
    const out: number[] = [];
    const caches = this.newCaches();
    try {
      let next = prompt;
      while (out.length < opts.maxNewTokens) {
        const logits = await this.step(caches, next, { lastOnly: true, onStage: opts.onStage });
        const id = greedyToken(logits, vocabSize);
        out.push(id);
        opts.onToken?.(id, out.length - 1);
        if (stop.has(id)) break;
        next = [id];
      }
      return out;
    } finally {
      caches.client?.clear();
      caches.server?.clear();
    }
  }

  /** Releases both runners' sessions. */
  async close(): Promise<void> {
    await Promise.all([this.runners.client?.close(), this.runners.server?.close()]);
  }
}

/** A copy of `x`, as the receiving side would rebuild it from the bytes on the wire. */
function handOver(x: HostTensor): HostTensor {
  return x.dtype === 'int64' ? { dtype: 'int64', shape: [...x.shape], data: x.data.slice() } : { dtype: 'float32', shape: [...x.shape], data: x.data.slice() };
}
