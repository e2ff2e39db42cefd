import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { makeGenericClientConstructor } from '@grpc/grpc-js';
import {
  ExecutorServiceClient as GeneratedExecutorServiceClient,
  ExecutorServiceService as GeneratedExecutorServiceService,
  SessionRequest,
  SessionResponse,
} from './generated/tandem/executor/v1/executor';

/** `bytes` values at least this long are referenced by {@link GatherWriter} until `finish()`, not copied. */
export const GATHER_MIN_BYTES = 1024;

/**
 * A protobuf writer for messages carrying large `bytes` fields (tensors). The stock
 * `BinaryWriter` copies a large payload into its growing buffer (re-copying it each time the
 * buffer doubles), moves it again at every enclosing `join()` whose length prefix needs more
 * than one byte, and copies it once more in `finish()`; ts-proto's serializer then copies the
 * result into a fresh Buffer. This writer keeps a list of parts instead: small fields go
 * through the stock writer, a `bytes` value of {@link GATHER_MIN_BYTES} or more is kept by
 * reference, `fork()`/`join()` only compute lengths, and `finish()` copies every part once into
 * one Buffer. So a tensor is copied exactly once on encode, and the output is byte-identical to
 * the stock writer's (same fields, same order, minimal varints).
 *
 * Ownership: a referenced `bytes` value is read at `finish()`, not at `bytes()`; the caller
 * must not change it in between (the generated `encode` followed by `finish()` in one
 * synchronous call, as {@link gatherSerialize} does, leaves no gap). After `finish()` the
 * output shares no memory with the inputs.
 *
 * Works with any ts-proto `encode(message, writer)`, so messages and fields added to the
 * proto later are encoded correctly without changes here.
 */
export class GatherWriter extends BinaryWriter {
  private parts: Uint8Array[] = [];
  private size = 0;
  private readonly forks: { parts: Uint8Array[]; size: number }[] = [];

  /** Moves what the stock writer holds into the current part list. */
  private flushInline(): void {
    const inline = super.finish();
    if (inline.length > 0) {
      this.parts.push(inline);
      this.size += inline.length;
    }
  }

  override bytes(value: Uint8Array): this {
    if (value.byteLength < GATHER_MIN_BYTES) return super.bytes(value);
    super.uint32(value.byteLength);
    this.flushInline();
    this.parts.push(value);
    this.size += value.byteLength;
    return this;
  }

  override fork(): this {
    this.flushInline();
    this.forks.push({ parts: this.parts, size: this.size });
    this.parts = [];
    this.size = 0;
    return this;
  }

  override join(): this {
    this.flushInline();
    const parent = this.forks.pop();
    if (!parent) throw new Error('invalid state, fork stack empty');
    const child = this.parts;
    const childSize = this.size;
    this.parts = parent.parts;
    this.size = parent.size;
    super.uint32(childSize);
    this.flushInline();
    for (const p of child) this.parts.push(p);
    this.size += childSize;
    return this;
  }

  /** Every byte written, in one new Buffer (the only copy of large payloads); resets the writer. */
  override finish(): Buffer<ArrayBuffer> {
    this.flushInline();
    if (this.forks.length > 0) throw new Error('invalid state, fork() without join()');
    const out = Buffer.allocUnsafe(this.size);
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    this.parts = [];
    this.size = 0;
    return out;
  }
}

/** A grpc-js serializer for a ts-proto message type that copies large `bytes` fields once ({@link GatherWriter}). */
export function gatherSerialize<T>(fns: { encode(message: T, writer?: BinaryWriter): BinaryWriter }): (value: T) => Buffer {
  return (value: T): Buffer => (fns.encode(value, new GatherWriter()) as GatherWriter).finish();
}

/**
 * The executor service definition used by every Tandem server and client: the generated one
 * with the tensor-carrying `Session` stream serialized by {@link gatherSerialize} (one copy of
 * each tensor instead of five). Byte-identical on the wire; other methods (and any added later)
 * keep the generated serializers. Deserialization is the generated one: it copies a tensor's
 * bytes once into a fresh aligned Buffer, which `fromWireTensor` then views without copying.
 */
export type ExecutorServiceService = typeof GeneratedExecutorServiceService;
export const ExecutorServiceService: ExecutorServiceService = {
  ...GeneratedExecutorServiceService,
  session: {
    ...GeneratedExecutorServiceService.session,
    requestSerialize: gatherSerialize(SessionRequest),
    responseSerialize: gatherSerialize(SessionResponse),
  },
};

/** A client of {@link ExecutorServiceService} (the generated client interface, fast serializers). */
export type ExecutorServiceClient = GeneratedExecutorServiceClient;
export const ExecutorServiceClient = makeGenericClientConstructor(
  ExecutorServiceService,
  'tandem.executor.v1.ExecutorService',
) as unknown as typeof GeneratedExecutorServiceClient;
