import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { Worker } from 'node:worker_threads';
import { modelIdOf, readManifest, type Manifest, type StageKind } from '@tandem/model';
import type { HostTensor } from '@tandem/protocol';
import { SessionCache, type EngineLoadOptions, type StageEngine, type StageKv } from './engine';
import { rebuildError, ownedTensors, transferListOf, type EngineThreadData, type FromThread, type ToThread } from './engine-thread-protocol';
import { EngineUnavailableError } from './errors';
import type { GcKind } from './gc-watch';

/** A session's KV cache as the event-loop thread holds it: a handle to the one kept in the inference thread. */
class CacheHandle {
  released = false;
  constructor(
    readonly id: number,
    readonly owner: WorkerStageEngine,
  ) {}
}

interface Pending {
  readonly inputs: readonly HostTensor[];
  readonly resolve: (outputs: HostTensor[]) => void;
  readonly reject: (err: Error) => void;
}

/** How long no cache must be live before the threads collect garbage (EngineLoadOptions.returnMemory), ms. */
export const IDLE_COLLECT_DELAY_MS = 200;

/**
 * The garbage collector as a function, for the thread that calls this (V8 exposes it only with
 * --expose-gc, which can be set at run time; a new context then has `gc`).
 */
function collectorOrUndefined(): (() => void) | undefined {
  try {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as unknown;
    return typeof gc === 'function' ? () => (gc as () => void)() : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A function to call when `quiet()` may have become true: this thread collects garbage (then calls
 * `collected`) IDLE_COLLECT_DELAY_MS later if it still holds (after a burst, not inside it).
 */
export function collectWhenQuiet(quiet: () => boolean, collected: () => void = () => {}): () => void {
  const collect = collectorOrUndefined();
  let timer: NodeJS.Timeout | undefined;
  return () => {
    if (!collect || timer || !quiet()) return;
    timer = setTimeout(() => {
      timer = undefined;
      if (quiet()) {
        collect();
        collected();
      }
    }, IDLE_COLLECT_DELAY_MS);
    timer.unref();
  };
}

/** The inference thread's entry: a .js file, so it loads under node, tsx and jest alike (it registers tsx itself). */
const THREAD_ENTRY = path.join(__dirname, 'engine-thread.js');

/**
 * StageEngine whose onnxruntime sessions and KV caches live in a worker thread, so that the
 * event loop (gRPC streams, health, status, keepalives, telemetry) keeps running while a
 * batch computes: onnxruntime-node's `run` holds the thread it is called on. The event-loop
 * thread holds cache handles; each call posts its inputs with their ArrayBuffers transferred
 * (no copy; the caller's arrays are then detached, and are handed back if the call fails) and
 * receives the outputs the same way. Calls are answered in order, one at a time.
 *
 * If the thread dies (an uncaught error, a crash, `terminate()`), every pending and later call
 * rejects with EngineUnavailableError (gRPC UNAVAILABLE) naming the cause, and `failed`
 * resolves with it; the engine never hangs a caller.
 */
export class WorkerStageEngine implements StageEngine<CacheHandle> {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private nextCache = 1;
  private failure: EngineUnavailableError | undefined;
  private closing = false;
  private liveCaches = 0;
  /** With EngineLoadOptions.returnMemory: collects this thread's garbage (tensors that came back, stream buffers) once no cache is live. */
  private collectWhenIdle: (() => void) | undefined;
  private gcListener: ((kind: GcKind, ms: number) => void) | undefined;
  private resolveFailed!: (e: Error) => void;
  readonly failed = new Promise<Error>((r) => {
    this.resolveFailed = r;
  });

  private constructor(
    private readonly worker: Worker,
    private readonly manifest: Manifest,
    readonly modelId: string,
    private readonly fusedAll: boolean,
  ) {
    worker.on('message', (m: FromThread) => this.onMessage(m));
    worker.on('error', (err) => this.fail(`failed: ${err.message}`, err));
    worker.on('messageerror', (err) => this.fail(`sent a message that could not be read: ${err.message}`, err));
    worker.on('exit', (code) => this.fail(this.closing ? 'was closed' : `exited with code ${code}`, undefined, !this.closing));
  }

  /**
   * Reads the manifest, starts the inference thread and waits until it loaded every stage.
   * @throws ModelFormatError for a bad model directory; the thread's load error otherwise.
   */
  static async load(modelDir: string, opts: EngineLoadOptions = {}): Promise<WorkerStageEngine> {
    const manifest = await readManifest(modelDir);
    const data: EngineThreadData = {
      modelDir,
      intraOpNumThreads: opts.intraOpNumThreads || undefined,
      fuseAllStages: opts.fuseAllStages === true,
      returnMemory: opts.returnMemory === true,
    };
    // execArgv [] : the thread needs none of the parent's flags (it registers tsx itself).
    const worker = new Worker(THREAD_ENTRY, { workerData: data, execArgv: [], name: 'tandem-engine' });
    await new Promise<void>((resolve, reject) => {
      const onMessage = (m: FromThread): void => {
        cleanup();
        if (m.type === 'ready') resolve();
        else {
          void worker.terminate();
          reject(m.type === 'load-failed' ? rebuildError(m.error) : new Error(`the inference thread sent ${m.type} before ready`));
        }
      };
      const onError = (err: Error): void => {
        cleanup();
        reject(new Error(`the inference thread failed while loading the model: ${err.message}`, { cause: err }));
      };
      const onExit = (code: number): void => {
        cleanup();
        reject(new Error(`the inference thread exited with code ${code} while loading the model`));
      };
      const cleanup = (): void => {
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
      };
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
    });
    const engine = new WorkerStageEngine(worker, manifest, modelIdOf(modelDir), opts.fuseAllStages === true);
    if (opts.returnMemory) engine.collectWhenIdle = collectWhenQuiet(() => engine.liveCaches === 0);
    return engine;
  }

  get stageCount(): number {
    return this.manifest.stages.length;
  }
  get nEmbd(): number {
    return this.manifest.config.nEmbd;
  }
  get nHead(): number {
    return this.manifest.config.nHead;
  }
  get vocabSize(): number {
    return this.manifest.config.vocabSize;
  }
  get nPositions(): number {
    return this.manifest.config.nPositions;
  }
  /** Stage compute runs on the worker thread, so the event loop's CPU is serving overhead only. */
  readonly computesOnEventLoop = false;
  stageKind(stage: number): StageKind {
    return this.manifest.stages[stage].kind;
  }

  newCache(): SessionCache<CacheHandle> {
    const h = new CacheHandle(this.nextCache++, this);
    this.liveCaches++;
    this.post({ op: 'new-cache', cache: h.id });
    return new SessionCache(h, this.stageCount);
  }

  releaseCache(cache: SessionCache<CacheHandle>): void {
    const h = this.handle(cache, 'cache');
    if (h.released) return;
    h.released = true;
    this.liveCaches--;
    this.post({ op: 'release-cache', cache: h.id });
    this.collectWhenIdle?.();
  }

  /** `sample`: the thread samples those outputs (StageEngine.runBatch), so their logits never cross to this thread. */
  async runBatch(
    stage: number,
    inputs: readonly HostTensor[],
    caches: readonly SessionCache<CacheHandle>[],
    sample?: readonly boolean[],
  ): Promise<HostTensor[]> {
    if (this.failure) throw this.failure;
    const ids = caches.map((c, i) => this.liveId(c, `caches[${i}]`));
    const sent = ownedTensors(inputs);
    return this.call((id) => ({ op: 'run', id, stage, inputs: sent, caches: ids, sample }), inputs, sent);
  }

  /** The whole range is fused only for `[0, stageCount)`, when loaded with `fuseAllStages`. */
  hasFusedRange(begin: number, end: number): boolean {
    return this.fusedAll && begin === 0 && end === this.stageCount;
  }

  /** One message to the thread for the whole range (one thread hop instead of one per stage). */
  async runRange(begin: number, end: number, input: HostTensor, cache: SessionCache<CacheHandle>, lastRowOnly: boolean, sample?: boolean): Promise<HostTensor> {
    if (this.failure) throw this.failure;
    const cacheId = this.liveId(cache, 'cache');
    const sent = ownedTensors([input]);
    return (await this.call((id) => ({ op: 'run-range', id, begin, end, input: sent[0], cache: cacheId, lastRowOnly, sample }), [input], sent))[0];
  }

  /** One message to the thread for a round of decode steps over the range (one thread hop instead of one per stage call). */
  async runSteps(
    begin: number,
    end: number,
    inputs: readonly HostTensor[],
    caches: readonly SessionCache<CacheHandle>[],
    sample?: readonly boolean[],
  ): Promise<HostTensor[]> {
    if (this.failure) throw this.failure;
    const ids = caches.map((c, i) => this.liveId(c, `caches[${i}]`));
    const sent = ownedTensors(inputs);
    return this.call((id) => ({ op: 'run-steps', id, begin, end, inputs: sent, caches: ids, sample }), inputs, sent);
  }

  /** The thread appends the state (keys and values transferred, no copy); then this side's count follows. */
  async putState(stage: number, cache: SessionCache<CacheHandle>, tokens: number, kv: StageKv | undefined): Promise<void> {
    if (this.failure) throw this.failure;
    const cacheId = this.liveId(cache, 'cache');
    const inputs = kv ? [kv.key, kv.value] : [];
    const sent = ownedTensors(inputs);
    await this.call((id) => ({ op: 'put-state', id, stage, cache: cacheId, tokens, inputs: sent }), inputs, sent);
    cache.advance(stage, stage + 1, tokens);
  }

  /** The thread exports and frees the state (keys and values transferred back); then this side's count is 0. */
  async takeState(stage: number, cache: SessionCache<CacheHandle>): Promise<StageKv | undefined> {
    if (this.failure) throw this.failure;
    const cacheId = this.liveId(cache, 'cache');
    const out = await this.call((id) => ({ op: 'take-state', id, stage, cache: cacheId }));
    cache.clearStage(stage);
    const [key, value] = out;
    return key?.dtype === 'float32' && value?.dtype === 'float32' ? { key, value } : undefined;
  }

  /** Runs a 4-token prompt and one decode step through every stage, in the inference thread. */
  async warmup(): Promise<void> {
    await this.call((id) => ({ op: 'warmup', id }));
  }

  /**
   * Releases every cache and session and ends the thread, after the calls already posted
   * (never `Worker.terminate()` during a call: onnxruntime-node then aborts the whole process).
   */
  async close(): Promise<void> {
    if (this.failure) return;
    this.closing = true;
    const exited = new Promise<void>((r) => this.worker.once('exit', () => r()));
    try {
      await this.call((id) => ({ op: 'close', id }));
    } catch {
      // A close that failed in the thread still ends it (the thread closes its port either way).
    }
    await exited;
  }

  /**
   * Fault injection for tests: the thread exits with code 1 once the calls already posted to
   * it are done, as a crash would (never inside an onnxruntime call, which would abort the
   * process). Calls posted later stay pending until the exit fails them.
   */
  simulateCrash(): void {
    this.post({ op: 'crash' });
  }

  /**
   * Posts the request `message(id)`, transferring the buffers of `sent` (the thread's copies of
   * `inputs`, handed back into them when the call fails), and resolves with the thread's outputs.
   */
  private call(message: (id: number) => ToThread, inputs: readonly HostTensor[] = [], sent: readonly HostTensor[] = []): Promise<HostTensor[]> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise<HostTensor[]>((resolve, reject) => {
      this.pending.set(id, { inputs, resolve, reject });
      this.post(message(id), transferListOf(sent));
    });
  }

  private post(m: ToThread, transfer: ArrayBuffer[] = []): void {
    if (this.failure) return;
    this.worker.postMessage(m, transfer);
  }

  /** The thread-side id of a live (not released) cache of this engine. @throws Error naming `field`. */
  private liveId(cache: SessionCache<CacheHandle>, field: string): number {
    const h = this.handle(cache, field);
    if (h.released) throw new Error(`${field} must not be released, given a released cache`);
    return h.id;
  }

  private handle(cache: SessionCache<CacheHandle>, field: string): CacheHandle {
    const h: unknown = cache instanceof SessionCache ? cache.kv : undefined;
    if (!(h instanceof CacheHandle) || h.owner !== this) throw new Error(`${field} must come from this engine's newCache(), given ${typeof cache}`);
    return h;
  }

  /**
   * Calls `listener(kind, ms)` for each garbage-collection pause of the inference thread from now
   * on (one listener; a later call replaces it). Such a pause stretches the engine call it falls in.
   */
  onGcPause(listener: (kind: GcKind, ms: number) => void): void {
    this.gcListener = listener;
  }

  private onMessage(m: FromThread): void {
    if (m.type === 'gc') {
      this.gcListener?.(m.kind, m.ms);
      return;
    }
    if (m.type !== 'done' && m.type !== 'failed') return;
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (m.type === 'done') {
      p.resolve(m.outputs as HostTensor[]);
      return;
    }
    // Put the returned memory back into the caller's tensors, which were detached by the transfer.
    m.inputs.forEach((t, i) => {
      const own = p.inputs[i] as { data: HostTensor['data'] } | undefined;
      if (own && own.data.byteLength === 0 && t.data.byteLength > 0) own.data = t.data;
    });
    p.reject(rebuildError(m.error));
  }

  /** The thread is gone: reject everything pending and refuse everything later. Idempotent. */
  private fail(reason: string, cause?: Error, report = true): void {
    if (this.failure) return;
    this.failure = new EngineUnavailableError(`the executor's inference thread ${reason}; no stage can run until the executor restarts`, { cause });
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
    // A thread that ended because close() asked it to is not a failure to report.
    if (report) this.resolveFailed(this.failure);
  }
}
