import { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';
import { makeGenericClientConstructor } from '@grpc/grpc-js';
import {
  ExecutorServiceClient as GeneratedExecutorServiceClient,
  ExecutorServiceService as GeneratedExecutorServiceService,
  SessionRequest,
  SessionResponse,
} from './generated/tandem/executor/v1/executor';

/** `bytes` values at least this long are referenced by {@link GatherWriter} until `finish()`, not copied, and decoded as views by {@link viewDeserialize}. */
export const GATHER_MIN_BYTES = 1024;

/** The reserved field of SessionRequest/SessionResponse that carries alignment padding (executor.proto). */
export const PADDING_FIELD = 2047;

/**
 * Where grpc-js puts a received message body: a large message (one spanning several HTTP/2 DATA
 * chunks) is concatenated with its 5-byte frame header into a fresh buffer, so the body starts
 * 5 bytes into its own ArrayBuffer. Aligning for this is only an optimisation: a decoder that
 * finds a tensor misaligned copies it.
 */
export const GRPC_BODY_OFFSET = 5;

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
  /** The large values kept by reference (to find the first one in {@link finishAligned}). */
  private large = new Set<Uint8Array>();

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
    this.large.add(value);
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

  /**
   * @param into where {@link finish}/{@link finishAligned} put their output: a new Buffer each
   *   time (default), or a view of `into` when it is large enough (the caller then owns the reuse
   *   rule: the output is overwritten by the next finish into the same buffer).
   */
  constructor(private readonly into?: Buffer<ArrayBuffer>) {
    super();
  }

  /** Every byte written, in one new Buffer (the only copy of large payloads); resets the writer. */
  override finish(): Buffer<ArrayBuffer> {
    return this.assemble(undefined);
  }

  /**
   * Like {@link finish} for a top-level message, with a length-delimited field `field` (unknown
   * to, or reserved in, the message) written first, sized so that the first large `bytes` value
   * starts at a multiple of `align` once the message sits `bodyOffset` bytes into its buffer.
   * Decoders skip the field; the decoded message equals the one {@link finish} would give.
   * Without a large value this is {@link finish}.
   */
  finishAligned(field: number, align = 8, bodyOffset = GRPC_BODY_OFFSET): Buffer<ArrayBuffer> {
    this.flushInline();
    let offset = 0;
    let found = false;
    for (const p of this.parts) {
      if (this.large.has(p)) { found = true; break; }
      offset += p.length;
    }
    if (!found) return this.assemble(undefined);
    const tag = new BinaryWriter().uint32(((field << 3) | 2) >>> 0).finish();
    // Padding = tag + 1-byte length k + k bytes, with k < align (< 128, so one length byte).
    const k = (((align - ((bodyOffset + tag.length + 1 + offset) % align)) % align) + align) % align;
    const pad = new Uint8Array(tag.length + 1 + k);
    pad.set(tag, 0);
    pad[tag.length] = k;
    return this.assemble(pad);
  }

  private assemble(prefix: Uint8Array | undefined): Buffer<ArrayBuffer> {
    this.flushInline();
    if (this.forks.length > 0) throw new Error('invalid state, fork() without join()');
    const need = this.size + (prefix?.length ?? 0);
    const out = this.into && this.into.length >= need ? this.into.subarray(0, need) : Buffer.allocUnsafe(need);
    let o = 0;
    if (prefix) { out.set(prefix, 0); o = prefix.length; }
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    this.parts = [];
    this.large = new Set();
    this.size = 0;
    return out;
  }
}

// A placeholder stands for a large bytes value while the generated decoder runs (it copies
// whatever reader.bytes() returns into a new Buffer); a random marker per process plus an index.
const MARKER = Buffer.from(Array.from({ length: 12 }, () => Math.floor(Math.random() * 256)));
const PLACEHOLDER_BYTES = MARKER.length + 4;

/** A reader whose `bytes()` returns a small placeholder for large values and remembers a view of each. */
class ViewReader extends BinaryReader {
  readonly views: Uint8Array[] = [];

  override bytes(): Uint8Array {
    const b = super.bytes();
    if (b.byteLength < GATHER_MIN_BYTES) return b;
    const p = Buffer.allocUnsafe(PLACEHOLDER_BYTES);
    MARKER.copy(p, 0);
    p.writeUInt32LE(this.views.push(b) - 1, MARKER.length);
    return p;
  }
}

/** Index of the view a placeholder stands for, or -1 when `v` is not a placeholder. */
function placeholderIndex(v: unknown): number {
  if (!Buffer.isBuffer(v) || v.length !== PLACEHOLDER_BYTES || MARKER.compare(v, 0, MARKER.length) !== 0) return -1;
  return v.readUInt32LE(MARKER.length);
}

/** Replaces every placeholder in a decoded message (plain objects and arrays) by a Buffer view; returns how many. */
function substitute(node: unknown, views: readonly Uint8Array[], depth: number): number {
  if (depth > 100 || typeof node !== 'object' || node === null || ArrayBuffer.isView(node)) return 0;
  let n = 0;
  const entries: [string | number, unknown][] = Array.isArray(node) ? node.map((v, i) => [i, v]) : Object.entries(node);
  for (const [k, v] of entries) {
    const i = placeholderIndex(v);
    if (i >= 0 && i < views.length) {
      const view = views[i];
      (node as Record<string | number, unknown>)[k] = Buffer.from(view.buffer, view.byteOffset, view.byteLength);
      n++;
    } else {
      n += substitute(v, views, depth + 1);
    }
  }
  return n;
}

/**
 * A grpc-js deserializer for a ts-proto message type that decodes large `bytes` fields
 * ({@link GATHER_MIN_BYTES} or more) as views of the received buffer instead of copies. It runs
 * the generated decoder (so fields added to the proto later decode as before) with a reader that
 * hands out small placeholders for large values, then puts views where the placeholders landed;
 * if any placeholder is not found again, it decodes the message the ordinary way.
 * Ownership: the views share memory with the received message buffer, which grpc-js allocates
 * per message and never reuses; the decoded message owns it.
 */
export function viewDeserialize<T>(fns: { decode(input: BinaryReader | Uint8Array, length?: number): T }): (buf: Buffer) => T {
  return (buf: Buffer): T => {
    const reader = new ViewReader(buf);
    const message = fns.decode(reader);
    if (reader.views.length === 0) return message;
    if (substitute(message, reader.views, 0) === reader.views.length) return message;
    return fns.decode(buf);
  };
}

/** Options of {@link gatherSerialize}. */
export interface GatherSerializeOptions {
  /** A field number reserved in the message: align the first large value to 8 bytes in grpc-js's receive buffer ({@link GatherWriter.finishAligned}). */
  readonly paddingField?: number;
  /**
   * Write into one buffer kept by the serializer (up to this many bytes; larger messages get a
   * new Buffer) instead of a new Buffer per message, saving the allocation and page faults of a
   * fresh buffer per tensor. Only for a serializer whose caller copies the result before calling
   * it again: grpc-js's server does (it frames every response into a new buffer in the same
   * synchronous call, server-interceptors `serializeMessage`); its client does NOT (a request
   * may wait, serialized, for the connection), so never use this for requests.
   */
  readonly reuseOutputUpTo?: number;
}

/**
 * A grpc-js serializer for a ts-proto message type that copies large `bytes` fields once
 * ({@link GatherWriter}), optionally aligned and into a reused buffer ({@link GatherSerializeOptions}).
 */
export function gatherSerialize<T>(fns: { encode(message: T, writer?: BinaryWriter): BinaryWriter }, opts: GatherSerializeOptions = {}): (value: T) => Buffer {
  let scratch = Buffer.allocUnsafe(0);
  const limit = opts.reuseOutputUpTo ?? 0;
  return (value: T): Buffer => {
    const w = fns.encode(value, new GatherWriter(limit > 0 ? scratch : undefined)) as GatherWriter;
    const out = opts.paddingField === undefined ? w.finish() : w.finishAligned(opts.paddingField);
    if (limit > 0 && out.buffer !== scratch.buffer && out.length <= limit) {
      // Did not fit: keep a larger buffer for the next messages (tensors of a session keep
      // their size, so this settles after the first few).
      scratch = Buffer.allocUnsafe(Math.min(limit, out.length * 2));
    }
    return out;
  };
}

/** Largest response the executor service's serializer writes into its reused buffer (bigger ones get their own). */
export const REUSED_RESPONSE_BYTES = 16 << 20;

/**
 * The executor service definition used by every Tandem server and client: the generated one
 * with the tensor-carrying `Session` stream serialized by {@link gatherSerialize} (one copy of
 * each tensor instead of five, the tensor aligned by the reserved padding field; responses
 * into a reused buffer, valid until the next response is serialized) and
 * deserialized by {@link viewDeserialize} (no copy), so `fromWireTensor` can use the received
 * bytes in place. Other methods (and any added later) keep the generated (de)serializers.
 */
export type ExecutorServiceService = typeof GeneratedExecutorServiceService;
export const ExecutorServiceService: ExecutorServiceService = {
  ...GeneratedExecutorServiceService,
  session: {
    ...GeneratedExecutorServiceService.session,
    requestSerialize: gatherSerialize(SessionRequest, { paddingField: PADDING_FIELD }),
    requestDeserialize: viewDeserialize(SessionRequest),
    // Responses are serialized by grpc-js's server only, which copies each at once.
    responseSerialize: gatherSerialize(SessionResponse, { paddingField: PADDING_FIELD, reuseOutputUpTo: REUSED_RESPONSE_BYTES }),
    responseDeserialize: viewDeserialize(SessionResponse),
  },
};

/** A client of {@link ExecutorServiceService} (the generated client interface, fast serializers). */
export type ExecutorServiceClient = GeneratedExecutorServiceClient;
export const ExecutorServiceClient = makeGenericClientConstructor(
  ExecutorServiceService,
  'tandem.executor.v1.ExecutorService',
) as unknown as typeof GeneratedExecutorServiceClient;
