/**
 * Messages between {@link WorkerStageEngine} (the event-loop thread) and its inference thread
 * (engine-thread.ts), and the helpers both sides use to move tensors and errors across.
 * Tensors cross by transferring their ArrayBuffers (no copy); errors cross as plain data and
 * are rebuilt as the classes toGrpcStatus (and the exit code of main) tells apart.
 */
import { ModelFormatError, StageInputError, type StageInputProblemKind } from '@tandem/model';
import type { HostTensor } from '@tandem/protocol';
import type { EngineLoadOptions } from './engine';
import type { GcKind } from './gc-watch';

/** What the inference thread is started with (its `workerData`): the model, and how to load it. */
export interface EngineThreadData extends EngineLoadOptions {
  readonly modelDir: string;
}

/** Requests to the inference thread; `id` pairs an answer with its request. Handled in order. */
export type ToThread =
  | { readonly op: 'new-cache'; readonly cache: number }
  | { readonly op: 'release-cache'; readonly cache: number }
  | {
      readonly op: 'run';
      readonly id: number;
      readonly stage: number;
      readonly inputs: readonly HostTensor[];
      readonly caches: readonly number[];
      /** StageEngine.runBatch's `sample`: which outputs come back as their greedy token. */
      readonly sample?: readonly boolean[];
    }
  /** StageEngine.runRange: one step of one session over stages [begin, end); answered with one output. */
  | {
      readonly op: 'run-range';
      readonly id: number;
      readonly begin: number;
      readonly end: number;
      readonly input: HostTensor;
      readonly cache: number;
      readonly lastRowOnly: boolean;
      /** StageEngine.runRange's `sample`. */
      readonly sample?: boolean;
    }
  /** StageEngine.runSteps: one-token steps of several sessions over stages [begin, end); answered with one output per step. */
  | {
      readonly op: 'run-steps';
      readonly id: number;
      readonly begin: number;
      readonly end: number;
      readonly inputs: readonly HostTensor[];
      readonly caches: readonly number[];
      /** StageEngine.runSteps's `sample`. */
      readonly sample?: readonly boolean[];
    }
  /** StageEngine.putState: `inputs` are [key, value] for an attention stage, [] otherwise; answered with no output. */
  | {
      readonly op: 'put-state';
      readonly id: number;
      readonly stage: number;
      readonly cache: number;
      readonly tokens: number;
      readonly inputs: readonly HostTensor[];
    }
  /** StageEngine.takeState: answered with [key, value] for an attention stage, [] otherwise. */
  | { readonly op: 'take-state'; readonly id: number; readonly stage: number; readonly cache: number }
  | { readonly op: 'warmup'; readonly id: number }
  | { readonly op: 'close'; readonly id: number }
  /** Fault injection for tests: exit with code 1 at once, as a crash would. */
  | { readonly op: 'crash' };

/** An error as it crosses the thread boundary. */
export interface ErrorData {
  readonly name: string;
  readonly message: string;
  readonly stack?: string;
  /** For StageInputError and ModelFormatError: the fields that rebuild it. */
  readonly field?: string;
  readonly rule?: string;
  readonly given?: string;
  readonly kind?: StageInputProblemKind;
}

/** Answers of the inference thread. A failed run hands its inputs back (transferred again). */
export type FromThread =
  | { readonly type: 'ready' }
  | { readonly type: 'load-failed'; readonly error: ErrorData }
  | { readonly type: 'done'; readonly id: number; readonly outputs: readonly HostTensor[] }
  | { readonly type: 'failed'; readonly id: number; readonly error: ErrorData; readonly inputs: readonly HostTensor[] }
  /** The thread paused `ms` for a garbage collection of `kind` (its heap holds every KV cache and tensor it made). */
  | { readonly type: 'gc'; readonly kind: GcKind; readonly ms: number };

/** Flattens an error for postMessage (structured clone keeps neither the class nor its fields). */
export function describeError(err: unknown): ErrorData {
  if (err instanceof StageInputError || err instanceof ModelFormatError) {
    return {
      name: err.name,
      message: err.message,
      stack: err.stack,
      field: err.field,
      rule: err.rule,
      given: err.given,
      kind: err instanceof StageInputError ? err.kind : undefined,
    };
  }
  if (err instanceof Error) return { name: err.name, message: err.message, stack: err.stack };
  return { name: 'Error', message: String(err) };
}

/**
 * Rebuilds an error from {@link describeError}: a StageInputError or ModelFormatError keeps its
 * class, fields and message (so it maps to the same gRPC status, or exit code, as in-thread);
 * anything else is an Error with the same name, message and the thread's stack.
 */
export function rebuildError(e: ErrorData): Error {
  if ((e.name === 'StageInputError' || e.name === 'ModelFormatError') && e.field !== undefined && e.rule !== undefined) {
    const err = e.name === 'StageInputError' ? new StageInputError(e.field, e.rule, '', e.kind ?? 'invalid') : new ModelFormatError(e.field, e.rule, '');
    // The message and rendered value were made on the other side: keep them as they were.
    Object.defineProperty(err, 'message', { value: e.message, enumerable: false, writable: true, configurable: true });
    Object.defineProperty(err, 'given', { value: e.given ?? '', enumerable: true });
    if (e.stack) err.stack = e.stack;
    return err;
  }
  const err = new Error(e.message);
  err.name = e.name;
  if (e.stack) err.stack = e.stack;
  return err;
}

/** True when `data` spans all of a (non-shared) ArrayBuffer, which can then be transferred whole. */
function ownsBuffer(data: Float32Array | BigInt64Array): boolean {
  return data.buffer instanceof ArrayBuffer && data.byteOffset === 0 && data.byteLength === data.buffer.byteLength;
}

/**
 * Tensors ready to transfer: each tensor whose data spans its whole buffer is kept as it is;
 * a view into a larger or shared buffer is copied (transferring would detach memory the
 * tensor does not own, and cloning would copy the whole buffer). O(bytes copied).
 */
export function ownedTensors(ts: readonly HostTensor[]): HostTensor[] {
  return ts.map((t) => (ownsBuffer(t.data) ? t : ({ dtype: t.dtype, shape: t.shape, data: t.data.slice() } as HostTensor)));
}

/** The distinct ArrayBuffers of `ts` that can be transferred (see {@link ownedTensors}). */
export function transferListOf(ts: readonly HostTensor[]): ArrayBuffer[] {
  const list = new Set<ArrayBuffer>();
  for (const t of ts) if (ownsBuffer(t.data)) list.add(t.data.buffer as ArrayBuffer);
  return [...list];
}
