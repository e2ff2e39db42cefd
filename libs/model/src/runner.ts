import * as path from 'node:path';
import { MessageChannel } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import type { HostTensor } from '@tandem/protocol';
import { ModelFormatError, ModelOptionError, StageInputError, renderGiven } from './errors';
import { FUSED_IO, buildFusedGraph, fusedSessionConfig } from './fused-graph';
import { type Manifest, type StageInfo, readManifest } from './manifest';
import { IO } from './stage-graphs';
import type { StageState } from './stage-state';

/**
 * Per-generation state of one runner: the next position of `embed` and the past keys/values of each
 * attention stage this runner owns. A cache only knows the stages its runner ran, so in a split each
 * side holds the state of its own stages. Not safe for concurrent use on the same stage (refused).
 */
export interface KvCache {
  /** Tokens embedded so far through this cache, i.e. the position id the next token gets. */
  readonly embeddedTokens: number;
  /** Tokens cached by attention stage `stage` (its past length); 0 before it first runs. */
  pastLength(stage: number): number;
  /** Bytes of keys and values held. */
  readonly kvBytes: number;
  /** Drops all keys/values and resets the position, to start a new sequence. */
  clear(): void;
}

/** Options of {@link StageRunner.load}. */
export interface StageRunnerOptions {
  /** Stage indices to load (default: all). Only these can be run. */
  readonly stages?: readonly number[];
  /** Intra-op threads per session (default: onnxruntime's, one per physical core). */
  readonly intraOpNumThreads?: number;
  /**
   * Let idle intra-op threads spin for new work (default false here; onnxruntime's own default is
   * true). Each stage is its own session with its own thread pool, and stages run back to back:
   * with spinning on, the pools of finished stages keep burning the cores the next stage needs
   * (measured: decode of the `small` preset 24 ms/token with spinning, 3.5 ms without).
   */
  readonly allowSpinning?: boolean;
  /**
   * onnxruntime's CPU memory arena and memory-pattern planning (default true, onnxruntime's own
   * default). The arena keeps the largest working set a call ever needed for the life of the
   * session (a burst of long prefills leaves it at its peak); false allocates and frees every
   * intermediate per call through malloc, so memory can return to the system after a burst,
   * at some cost per call (measured by `npm run bench:memory`).
   */
  readonly memoryArena?: boolean;
  /** Called after each session is created: sessions loaded, sessions to load, stage name. */
  readonly onProgress?: (loaded: number, total: number, stageName: string) => void;
  /**
   * Contiguous stage ranges `[begin, end)` (end exclusive, every stage loaded here) for which one
   * fused session is built at load time from the stage graphs ({@link buildFusedGraph}), used by
   * {@link StageRunner.runRange} for exactly that range. A server that runs whole generations
   * passes `[[0, stageCount]]`. Each fused session holds its own copy of its weights (on top of
   * the per-stage sessions'), so this costs that range's `paramBytes` again in memory.
   */
  readonly fusedRanges?: readonly (readonly [number, number])[];
}

/** Options of {@link StageRunner.runRange}. */
export interface RunRangeOptions {
  /** When the range ends with the head: compute the logits of the last position only ([1,1,V]). */
  readonly lastOnly?: boolean;
}

class RunnerCache implements KvCache {
  embeddedTokens = 0;
  readonly kv = new Map<number, { key: ort.Tensor; value: ort.Tensor }>();
  readonly inFlight = new Set<number>();

  constructor(readonly owner: StageRunner) {}

  pastLength(stage: number): number {
    return this.kv.get(stage)?.key.dims[2] ?? 0;
  }

  get kvBytes(): number {
    let n = 0;
    for (const { key, value } of this.kv.values()) n += 4 * (key.size + value.size);
    return n;
  }

  clear(): void {
    for (const { key, value } of this.kv.values()) freeTensors(key, value);
    this.kv.clear();
    this.embeddedTokens = 0;
  }
}

const product = (dims: readonly number[]): number => dims.reduce((a, b) => a * b, 1);

/** A port whose other end is closed: what is posted to it with its buffers transferred is dropped, and their memory with it. */
const dropPort = (() => {
  const { port1, port2 } = new MessageChannel();
  port2.close();
  port1.unref();
  return port1;
})();

/**
 * Disposes of tensors this runner made and no one else holds (a cache's keys and values once
 * replaced), and frees their memory now. V8 frees an ArrayBuffer's memory only when it collects
 * the object, and every decode step replaces each attention stage's keys and values (their
 * whole context, 2 KB a position per stage on the `small` preset): left to the collector, that
 * churn made the inference thread collect every few dozen steps, and the buffers of sessions
 * still running when it did outlived one collection and then waited for a full one (edge,
 * server-only at 8 req/s: 172 ms of pauses per second). Transferring a buffer to a closed port
 * detaches it and drops its memory at once. A buffer that is a view into a larger one, or that
 * cannot be transferred, is left to the collector.
 */
function freeTensors(...tensors: readonly ort.Tensor[]): void {
  const views: ArrayBufferView[] = [];
  for (const t of tensors) {
    if (t.location === 'cpu') views.push(t.data as Float32Array);
    t.dispose();
  }
  freeViews(views);
}

/**
 * Frees the memory of arrays no one reads again now, as {@link freeTensors} does (their buffers
 * detached by a transfer to a closed port): those whose buffer they span whole; a view into a
 * larger buffer is left to the collector. The arrays are empty afterwards.
 */
export function freeViews(views: readonly ArrayBufferView[]): void {
  const buffers: ArrayBuffer[] = [];
  for (const d of views) {
    const b = d.buffer;
    if (b instanceof ArrayBuffer && b.byteLength > 0 && d.byteOffset === 0 && d.byteLength === b.byteLength && !buffers.includes(b)) buffers.push(b);
  }
  if (buffers.length === 0) return;
  try {
    dropPort.postMessage(null, buffers);
  } catch {
    // DataCloneError: a buffer that may not be transferred. The collector frees them all later.
  }
}

/**
 * The last position of a hidden state [1, T, D] as [1, 1, D] (a copy of D floats). Stages that
 * are position-wise (the head) give on it exactly the last row they would give on the whole
 * state, so a caller that needs only the next token runs the head on this alone.
 */
export function lastPosition(x: Extract<HostTensor, { dtype: 'float32' }>): Extract<HostTensor, { dtype: 'float32' }> {
  const [, T, D] = x.shape;
  if (T <= 1) return x;
  return { ...x, shape: [1, 1, D], data: x.data.slice((T - 1) * D, T * D) };
}

function toHost(t: ort.Tensor): HostTensor & { dtype: 'float32' } {
  return { dtype: 'float32', shape: [...t.dims], data: t.data as Float32Array };
}

/**
 * Runs a chosen subset of a model's stages with onnxruntime-node, one session per stage. Client
 * and server use the same class; only which stages they load differs. All inputs are validated
 * before anything runs, so a refused call leaves the cache unchanged.
 */
export class StageRunner {
  private closed = false;

  private constructor(
    /** The model's validated manifest. */
    readonly manifest: Manifest,
    /** Indices of the stages this runner loaded and may run. */
    readonly stages: ReadonlySet<number>,
    private readonly sessions: ReadonlyMap<number, ort.InferenceSession>,
    /** Fused sessions keyed by `${begin}-${end}`. */
    private readonly fused: ReadonlyMap<string, ort.InferenceSession> = new Map(),
  ) {}

  /**
   * Reads the manifest of `dir` and creates a session for each requested stage.
   * @throws ModelFormatError when the manifest is invalid or a stage index is out of range.
   */
  static async load(dir: string, opts: StageRunnerOptions = {}): Promise<StageRunner> {
    const manifest = await readManifest(dir);
    const n = manifest.stages.length;
    const wanted = opts.stages ?? manifest.stages.map((s) => s.index);
    for (const [i, s] of wanted.entries()) {
      if (!Number.isInteger(s) || s < 0 || s >= n) throw new StageInputError(`stages[${i}]`, `be a stage index in 0..${n - 1}`, s);
    }
    const stages = [...new Set(wanted)].sort((a, b) => a - b);
    const sessionOptions: ort.InferenceSession.SessionOptions = {
      graphOptimizationLevel: 'all',
      executionMode: 'sequential',
      enableCpuMemArena: opts.memoryArena !== false,
      enableMemPattern: opts.memoryArena !== false,
      ...(opts.intraOpNumThreads ? { intraOpNumThreads: opts.intraOpNumThreads } : {}),
      extra: { session: { intra_op: { allow_spinning: opts.allowSpinning === true ? '1' : '0' } } },
    };
    const ranges = opts.fusedRanges ?? [];
    for (const [i, r] of ranges.entries()) {
      const ok = Array.isArray(r) && r.length === 2 && Number.isInteger(r[0]) && Number.isInteger(r[1]) && r[0] >= 0 && r[0] < r[1] && r[1] <= n;
      if (!ok) throw new ModelOptionError(`fusedRanges[${i}]`, `be [begin, end] with 0 <= begin < end <= ${n}`, r);
      for (let s = r[0]; s < r[1]; s++) {
        if (!stages.includes(s)) throw new ModelOptionError(`fusedRanges[${i}]`, `cover only loaded stages (stage ${s} is not)`, r);
      }
    }
    const sessions = new Map<number, ort.InferenceSession>();
    const fused = new Map<string, ort.InferenceSession>();
    try {
      for (const [k, s] of stages.entries()) {
        const info = manifest.stages[s];
        // Created from the file path so onnxruntime resolves the external data beside it.
        sessions.set(s, await createStageSession(dir, s, info, sessionOptions));
        opts.onProgress?.(k + 1, stages.length, info.name);
      }
      for (const [begin, end] of ranges) {
        const key = `${begin}-${end}`;
        if (fused.has(key)) continue;
        const extra = { session: { ...fusedSessionConfig(dir), intra_op: { allow_spinning: opts.allowSpinning === true ? '1' : '0' } } };
        fused.set(key, await ort.InferenceSession.create(await buildFusedGraph(dir, manifest, begin, end), { ...sessionOptions, extra }));
        opts.onProgress?.(stages.length, stages.length, `fused ${key}`);
      }
    } catch (err) {
      await Promise.all([...sessions.values(), ...fused.values()].map((x) => x.release()));
      throw err;
    }
    return new StageRunner(manifest, new Set(stages), sessions, fused);
  }

  /** Whether {@link runRange} over `[begin, end)` uses one fused session (built at load). */
  hasFusedRange(begin: number, end: number): boolean {
    return this.fused.has(`${begin}-${end}`);
  }

  /** A fresh cache for one generation (sequence). */
  newCache(): KvCache {
    return new RunnerCache(this);
  }

  /**
   * Runs one stage on one sequence. `embed` takes token ids int64 [1,T] (positions come from the
   * cache); other stages take the hidden state float32 [1,T,nEmbd]. Returns the hidden state
   * [1,T,nEmbd], or the logits [1,T,vocabSize] for `head`. Advances the cache for `embed` and
   * attention stages.
   * @throws StageInputError (nothing ran, cache unchanged) when the stage is not loaded here, the
   *   cache is not from this runner or in use, the dtype/shape is wrong, an id is outside the
   *   vocabulary or the context would exceed nPositions.
   */
  async run(stage: number, input: HostTensor, cache: KvCache): Promise<HostTensor> {
    const [out] = await this.runBatch(stage, [input], [cache]);
    return out;
  }

  /**
   * Runs one stage for several sequences. Position-wise stages (`embed`, mlp, `head`) concatenate
   * the inputs along T and make one session call, which is cheaper than one call each; attention
   * stages run the sequences one after another (each has its own past length, and padding to a
   * common length would cost more than it saves at these sizes). Results equal separate
   * {@link run} calls up to float rounding (~1e-7). All inputs are validated before any runs.
   * @throws StageInputError as {@link run}, with fields prefixed `inputs[i]`/`caches[i]`.
   */
  async runBatch(stage: number, inputs: readonly HostTensor[], caches: readonly KvCache[]): Promise<HostTensor[]> {
    const info = this.checkStage(stage);
    if (inputs.length === 0) throw new StageInputError('inputs', 'be a non-empty array', inputs);
    if (caches.length !== inputs.length) throw new StageInputError('caches', `have one cache per input (${inputs.length})`, `${caches.length} caches`);
    const single = inputs.length === 1;
    const at = (i: number, f: string): string => (single ? f : f.replace(/^(input|cache)/, (m) => `${m}s[${i}]`));
    const own = caches.map((c, i) => this.checkCache(c, at(i, 'cache')));
    const lengths = inputs.map((x, i) => this.checkInput(info, x, own[i], (f) => at(i, f)));
    if (info.kind === 'embed' || info.kind === 'attn') {
      if (new Set(own).size !== own.length) throw new StageInputError('caches', `be distinct for stage ${info.name}, which advances them`, 'a repeated cache');
    }
    for (const c of own)
      if (c.inFlight.has(stage)) throw new StageInputError('cache', `not be in use by another call on stage ${info.name}`, 'a cache in use', 'precondition');
    for (const c of own) c.inFlight.add(stage);
    try {
      const session = this.sessions.get(stage) as ort.InferenceSession;
      switch (info.kind) {
        case 'embed':
          return await this.runEmbed(session, inputs, own, lengths);
        case 'attn': {
          const outs: HostTensor[] = [];
          for (const [i, x] of inputs.entries()) outs.push(await this.runAttn(session, stage, x, own[i]));
          return outs;
        }
        default:
          return await this.runPositionwise(session, info, inputs, lengths);
      }
    } finally {
      for (const c of own) c.inFlight.delete(stage);
    }
  }

  /**
   * Runs stages `begin..end-1` on one sequence, feeding each stage's output to the next, and
   * returns the last one's output (`[1,T,nEmbd]`, or logits `[1,T,V]` / `[1,1,V]` with
   * `lastOnly` when the range ends with the head). With a fused session for exactly this range
   * ({@link StageRunnerOptions.fusedRanges}) it is one session call; otherwise one call per stage
   * (with `lastOnly`, the head then runs on the last position only). Both give the same values,
   * bit for bit (the fused graph is the stage graphs' nodes, unchanged), and keep the cache in
   * the same form, so a sequence may mix fused ranges, other ranges and single stages freely.
   * Everything is validated before anything runs; a refusal leaves the cache unchanged.
   * @throws StageInputError as {@link run} (fields `begin`/`end` for a bad range, `input` for the
   *   input of stage `begin`, `input.shape[1]` when any stage of the range would exceed nPositions).
   */
  async runRange(begin: number, end: number, input: HostTensor, cache: KvCache, opts: RunRangeOptions = {}): Promise<HostTensor> {
    const n = this.manifest.stages.length;
    this.checkStage(begin);
    if (!Number.isInteger(end) || end <= begin || end > n)
      throw new StageInputError('end', `be a stage index in ${begin + 1}..${n} (exclusive end after begin ${begin})`, end);
    for (let s = begin; s < end; s++) this.checkStage(s);
    const own = this.checkCache(cache, 'cache');
    const T = this.checkInput(this.manifest.stages[begin], input, own, (f) => f);
    for (let s = begin + 1; s < end; s++) {
      const info = this.manifest.stages[s];
      if (info.kind === 'attn') this.checkContext(info, own, T, (f) => f);
    }
    for (let s = begin; s < end; s++) {
      if (own.inFlight.has(s))
        throw new StageInputError('cache', `not be in use by another call on stage ${this.manifest.stages[s].name}`, 'a cache in use', 'precondition');
    }
    const session = this.fused.get(`${begin}-${end}`);
    if (session) {
      for (let s = begin; s < end; s++) own.inFlight.add(s);
      try {
        return await this.runFused(session, begin, end, input, own, T, opts.lastOnly === true);
      } finally {
        for (let s = begin; s < end; s++) own.inFlight.delete(s);
      }
    }
    let x = input;
    for (let s = begin; s < end; s++) {
      if (opts.lastOnly && this.manifest.stages[s].kind === 'head' && x.dtype === 'float32') x = lastPosition(x);
      x = await this.run(s, x, own);
    }
    return x;
  }

  /**
   * A copy of the state stage `stage` holds for the sequence of `cache` (see {@link StageState}):
   * for `embed` its token count; for an attention stage its past length and keys and values
   * float32 [1, nHead, T, headDim] (fresh arrays; T may be 0). The cache is unchanged: to move
   * the state elsewhere, follow with {@link dropState}.
   * @throws StageInputError (nothing changed) naming `stage` when it is not an embed or attention
   *   stage loaded here, `cache` when it is not this runner's or is in use on that stage.
   */
  exportState(stage: number, cache: KvCache): StageState {
    const { info, own } = this.stateAccess(stage, cache);
    if (info.kind === 'embed') return { tokens: own.embeddedTokens };
    const { nHead: H, nEmbd: D } = this.manifest.config;
    const kv = own.kv.get(stage);
    const T = kv?.key.dims[2] ?? 0;
    const copy = (t: ort.Tensor | undefined): HostTensor & { dtype: 'float32' } => ({
      dtype: 'float32',
      shape: [1, H, T, D / H],
      data: t ? (t.data as Float32Array).slice() : new Float32Array(0),
    });
    return { tokens: T, key: copy(kv?.key), value: copy(kv?.value) };
  }

  /**
   * Appends `state` to what stage `stage` holds for the sequence of `cache`: its positions
   * follow those held (a stage holding none takes positions 0..tokens-1), so state handed over in
   * chunks of whole positions is appended chunk by chunk, in order. `embed` takes the count
   * alone (its next token gets position held + tokens); an attention stage takes keys and
   * values float32 [1, nHead, tokens, headDim] (copied; the caller keeps its arrays). The next
   * {@link run} of the stage continues from there exactly as if it had computed those positions.
   * Finiteness is not checked (the caller's rule: the executor refuses NaN before this).
   * @throws StageInputError (nothing changed) as {@link exportState}, and naming `state.tokens`
   *   (not an integer >= 1, or beyond nPositions with what is held), `state.key` / `state.value`
   *   (present for `embed`; absent, not float32 or not of that shape for an attention stage).
   */
  appendState(stage: number, cache: KvCache, state: StageState): void {
    const { info, own } = this.stateAccess(stage, cache);
    const { nHead: H, nEmbd: D, nPositions } = this.manifest.config;
    const n = state.tokens;
    if (!Number.isInteger(n) || n < 1) throw new StageInputError('state.tokens', 'be an integer >= 1', n);
    const held = info.kind === 'embed' ? own.embeddedTokens : own.pastLength(stage);
    if (held + n > nPositions)
      throw new StageInputError(
        'state.tokens',
        `keep the context within nPositions = ${nPositions} (${held} tokens held by stage ${info.name})`,
        n,
        'precondition',
      );
    if (info.kind === 'embed') {
      for (const f of ['key', 'value'] as const) {
        if (state[f] !== undefined) throw new StageInputError(`state.${f}`, `be absent for stage ${info.name} (its state is its token count)`, 'a tensor');
      }
      own.embeddedTokens += n;
      return;
    }
    const want = [1, H, n, D / H];
    const parts = (['key', 'value'] as const).map((f) => {
      const t = state[f];
      if (t === undefined) throw new StageInputError(`state.${f}`, `be present for attention stage ${info.name}`, t);
      if (t.dtype !== 'float32' || !(t.data instanceof Float32Array)) throw new StageInputError(`state.${f}.dtype`, "be 'float32'", t.dtype);
      if (t.shape.length !== 4 || t.shape.some((d, i) => d !== want[i]))
        throw new StageInputError(`state.${f}.shape`, `be [${want.join(', ')}] (state.tokens positions)`, t.shape);
      if (t.data.length !== product(want)) throw new StageInputError(`state.${f}.data`, `hold ${product(want)} values`, `${t.data.length} values`);
      return t.data;
    });
    const past = own.kv.get(stage);
    const joined = parts.map((add, i) => {
      const before = past ? ((i === 0 ? past.key : past.value).data as Float32Array) : new Float32Array(0);
      const out = new Float32Array(H * (held + n) * (D / H));
      const hd = D / H;
      for (let h = 0; h < H; h++) {
        out.set(before.subarray(h * held * hd, (h + 1) * held * hd), h * (held + n) * hd);
        out.set(add.subarray(h * n * hd, (h + 1) * n * hd), (h * (held + n) + held) * hd);
      }
      return new ort.Tensor('float32', out, [1, H, held + n, hd]);
    });
    if (past) freeTensors(past.key, past.value);
    own.kv.set(stage, { key: joined[0], value: joined[1] });
  }

  /**
   * Drops what stage `stage` holds for the sequence of `cache`: an attention stage's keys and
   * values are freed, `embed`'s count returns to 0 (after the state moved elsewhere).
   * @throws StageInputError (nothing changed) as {@link exportState}.
   */
  dropState(stage: number, cache: KvCache): void {
    const { info, own } = this.stateAccess(stage, cache);
    if (info.kind === 'embed') {
      own.embeddedTokens = 0;
      return;
    }
    const kv = own.kv.get(stage);
    if (kv) {
      freeTensors(kv.key, kv.value);
      own.kv.delete(stage);
    }
  }

  /** Checks for the state methods: an embed or attention stage loaded here, this runner's cache, not in use on it. */
  private stateAccess(stage: number, cache: KvCache): { info: StageInfo; own: RunnerCache } {
    const info = this.checkStage(stage);
    if (info.kind !== 'embed' && info.kind !== 'attn')
      throw new StageInputError('stage', `be an embed or attention stage (stage ${info.name} is ${info.kind}, which keeps no state)`, stage);
    const own = this.checkCache(cache, 'cache');
    if (own.inFlight.has(stage)) throw new StageInputError('cache', `not be in use by another call on stage ${info.name}`, 'a cache in use', 'precondition');
    return { info, own };
  }

  /** Releases every session. The runner cannot be used afterwards. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.sessions.values(), ...this.fused.values()].map((s) => s.release()));
  }

  private async runFused(
    session: ort.InferenceSession,
    begin: number,
    end: number,
    x: HostTensor,
    cache: RunnerCache,
    T: number,
    lastOnly: boolean,
  ): Promise<HostTensor> {
    const { nHead: H, nEmbd: D } = this.manifest.config;
    const feeds: Record<string, ort.Tensor> = {};
    const first = this.manifest.stages[begin];
    if (first.kind === 'embed') {
      const pos = new BigInt64Array(T);
      for (let t = 0; t < T; t++) pos[t] = BigInt(cache.embeddedTokens + t);
      feeds[IO.inputIds] = new ort.Tensor('int64', x.data as BigInt64Array, [1, T]);
      feeds[IO.positionIds] = new ort.Tensor('int64', pos, [1, T]);
    } else {
      feeds[IO.hidden] = new ort.Tensor('float32', x.data as Float32Array, [1, T, D]);
    }
    let empty: ort.Tensor | undefined;
    for (let s = begin; s < end; s++) {
      if (this.manifest.stages[s].kind !== 'attn') continue;
      let past = cache.kv.get(s);
      if (!past) {
        empty ??= new ort.Tensor('float32', new Float32Array(0), [1, H, 0, D / H]);
        past = { key: empty, value: empty };
      }
      feeds[FUSED_IO.pastKey(s)] = past.key;
      feeds[FUSED_IO.pastValue(s)] = past.value;
    }
    const last = this.manifest.stages[end - 1];
    if (last.kind === 'head') feeds[FUSED_IO.headStart] = new ort.Tensor('int64', BigInt64Array.of(BigInt(lastOnly ? T - 1 : 0)), [1]);
    const r = await session.run(feeds);
    if (first.kind === 'embed') cache.embeddedTokens += T;
    for (let s = begin; s < end; s++) {
      if (this.manifest.stages[s].kind !== 'attn') continue;
      // Presents become the next step's pasts as they are (no copy), as in per-stage runs; the
      // pasts they replace (fed to this call) are freed.
      const old = cache.kv.get(s);
      cache.kv.set(s, { key: r[FUSED_IO.presentKey(s)], value: r[FUSED_IO.presentValue(s)] });
      if (old) freeTensors(old.key, old.value);
    }
    const out = last.kind === 'head' ? IO.logits : last.kind === 'embed' ? IO.hidden : IO.hiddenOut;
    return toHost(r[out]);
  }

  private checkStage(stage: number): StageInfo {
    const n = this.manifest.stages.length;
    if (!Number.isInteger(stage) || stage < 0 || stage >= n) throw new StageInputError('stage', `be a stage index in 0..${n - 1}`, stage);
    if (this.closed) throw new StageInputError('stage', 'be run on an open runner (this one is closed)', stage, 'precondition');
    if (!this.stages.has(stage)) {
      throw new StageInputError('stage', `be one of the stages loaded by this runner (${[...this.stages].join(',') || 'none'})`, stage, 'precondition');
    }
    return this.manifest.stages[stage];
  }

  private checkCache(c: KvCache, field: string): RunnerCache {
    if (!(c instanceof RunnerCache) || c.owner !== this) throw new StageInputError(field, "come from this runner's newCache()", typeof c);
    return c;
  }

  /** Validates one input; returns its token count T. */
  private checkInput(info: StageInfo, x: HostTensor, cache: RunnerCache, at: (f: string) => string): number {
    const { vocabSize: V, nEmbd: D } = this.manifest.config;
    if (typeof x !== 'object' || x === null) throw new StageInputError(at('input'), 'be a tensor {dtype, shape, data}', x);
    const shape: unknown = x.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0))
      throw new StageInputError(at('input.shape'), 'be an array of non-negative integers', shape);
    if (info.kind === 'embed') {
      if (x.dtype !== 'int64') throw new StageInputError(at('input.dtype'), `be 'int64' for stage ${info.name}`, x.dtype);
      if (shape.length !== 2 || shape[0] !== 1 || shape[1] < 1)
        throw new StageInputError(at('input.shape'), `be [1, T] with T >= 1 for stage ${info.name}`, shape);
    } else {
      if (x.dtype !== 'float32') throw new StageInputError(at('input.dtype'), `be 'float32' for stage ${info.name}`, x.dtype);
      if (shape.length !== 3 || shape[0] !== 1 || shape[1] < 1 || shape[2] !== D)
        throw new StageInputError(at('input.shape'), `be [1, T, ${D}] with T >= 1 for stage ${info.name}`, shape);
    }
    const T = shape[1] as number;
    const ArrayType = x.dtype === 'int64' ? BigInt64Array : Float32Array;
    if (!(x.data instanceof ArrayType) || x.data.length !== product(shape)) {
      throw new StageInputError(
        at('input.data'),
        `be a ${ArrayType.name} of ${product(shape)} values (the shape's product)`,
        x.data instanceof ArrayType ? `${x.data.length} values` : typeof x.data,
      );
    }
    if (info.kind === 'embed') {
      const ids = x.data as BigInt64Array;
      for (let i = 0; i < ids.length; i++) {
        if (ids[i] < 0n || ids[i] >= BigInt(V)) throw new StageInputError(at(`input.data[${i}]`), `be a token id in 0..${V - 1}`, ids[i]);
      }
    }
    this.checkContext(info, cache, T, at);
    return T;
  }

  /** Refuses T more tokens when stage `info` (embed or attn) would then hold more than nPositions. */
  private checkContext(info: StageInfo, cache: RunnerCache, T: number, at: (f: string) => string): void {
    const { nPositions } = this.manifest.config;
    const before = info.kind === 'embed' ? cache.embeddedTokens : info.kind === 'attn' ? cache.pastLength(info.index) : 0;
    if (before + T > nPositions) {
      throw new StageInputError(
        at('input.shape[1]'),
        `keep the context within nPositions = ${nPositions} (${before} tokens already in the cache of stage ${info.name})`,
        T,
        before > 0 ? 'precondition' : 'invalid',
      );
    }
  }

  private async runEmbed(
    session: ort.InferenceSession,
    inputs: readonly HostTensor[],
    caches: readonly RunnerCache[],
    lengths: readonly number[],
  ): Promise<HostTensor[]> {
    const total = lengths.reduce((a, b) => a + b, 0);
    const ids = inputs.length === 1 ? (inputs[0].data as BigInt64Array) : new BigInt64Array(total);
    const pos = new BigInt64Array(total);
    let o = 0;
    for (const [i, x] of inputs.entries()) {
      if (inputs.length > 1) ids.set(x.data as BigInt64Array, o);
      for (let t = 0; t < lengths[i]; t++) pos[o + t] = BigInt(caches[i].embeddedTokens + t);
      o += lengths[i];
    }
    const r = await session.run({
      [IO.inputIds]: new ort.Tensor('int64', ids, [1, total]),
      [IO.positionIds]: new ort.Tensor('int64', pos, [1, total]),
    });
    for (const [i, c] of caches.entries()) c.embeddedTokens += lengths[i];
    return this.split(r[IO.hidden], lengths);
  }

  private async runAttn(session: ort.InferenceSession, stage: number, x: HostTensor, cache: RunnerCache): Promise<HostTensor> {
    const { nHead: H, nEmbd: D } = this.manifest.config;
    let past = cache.kv.get(stage);
    if (!past) {
      const empty = new ort.Tensor('float32', new Float32Array(0), [1, H, 0, D / H]);
      past = { key: empty, value: empty };
    }
    const r = await session.run({
      [IO.hidden]: new ort.Tensor('float32', x.data as Float32Array, x.shape),
      [IO.pastKey]: past.key,
      [IO.pastValue]: past.value,
    });
    // The present tensors are fed back as the next step's past as they are: no copy. The past
    // they replace is freed (an empty one was made for this call).
    cache.kv.set(stage, { key: r[IO.presentKey], value: r[IO.presentValue] });
    freeTensors(past.key, past.value);
    return toHost(r[IO.hiddenOut]);
  }

  private async runPositionwise(
    session: ort.InferenceSession,
    info: StageInfo,
    inputs: readonly HostTensor[],
    lengths: readonly number[],
  ): Promise<HostTensor[]> {
    const D = this.manifest.config.nEmbd;
    const total = lengths.reduce((a, b) => a + b, 0);
    let data: Float32Array;
    if (inputs.length === 1) data = inputs[0].data as Float32Array;
    else {
      data = new Float32Array(total * D);
      let o = 0;
      for (const x of inputs) {
        data.set(x.data as Float32Array, o);
        o += x.data.length;
      }
    }
    const r = await session.run({ [IO.hidden]: new ort.Tensor('float32', data, [1, total, D]) });
    return this.split(r[info.kind === 'head' ? IO.logits : IO.hiddenOut], lengths);
  }

  /** Splits a [1, ΣT, W] output back into one [1, T_i, W] tensor per sequence (copies when more than one). */
  private split(out: ort.Tensor, lengths: readonly number[]): HostTensor[] {
    if (lengths.length === 1) return [toHost(out)];
    const W = out.dims[2];
    const all = out.data as Float32Array;
    let o = 0;
    const parts = lengths.map((T): HostTensor => {
      const data = all.slice(o * W, (o + T) * W);
      o += T;
      return { dtype: 'float32', shape: [1, T, W], data };
    });
    // The batch's own output is read by no one once copied: freed now, not by the collector
    // (a batched head's is B × V floats, 201 KB a step with GPT-2's vocabulary).
    freeTensors(out);
    return parts;
  }
}

/**
 * One stage's onnxruntime session. A stage file or weight file that is short, empty or corrupt
 * makes onnxruntime throw its own text (a C++ source line, an offset); it is refused here as a
 * ModelFormatError naming the stage's file field, the rule and the files, with onnxruntime's
 * reason cut short, so the services and the CLI report a bad model file clearly.
 */
async function createStageSession(dir: string, index: number, info: StageInfo, options: ort.InferenceSession.SessionOptions): Promise<ort.InferenceSession> {
  try {
    return await ort.InferenceSession.create(path.join(dir, info.file), options);
  } catch (err) {
    const files = [info.file, ...(info.dataFiles ?? [])];
    const reason = String((err as Error)?.message ?? err).replace(/\s+/g, ' ');
    const rule = `be a complete ONNX graph with complete weight files (${renderGiven(files.join(', '))})`;
    throw new ModelFormatError(`stages[${index}].file`, rule, info.file, {
      cause: err,
      message: `stages[${index}].file must ${rule}, given ${renderGiven(info.file)}: onnxruntime: ${reason.length > 300 ? `${reason.slice(0, 297)}...` : reason}`,
    });
  }
}
