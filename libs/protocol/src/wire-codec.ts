import { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';
import { makeGenericClientConstructor } from '@grpc/grpc-js';
import { cut } from './render';
import {
  ExecutorServiceClient as GeneratedExecutorServiceClient,
  ExecutorServiceService as GeneratedExecutorServiceService,
  GetStatusRequest,
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
      if (this.large.has(p)) {
        found = true;
        break;
      }
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
    if (prefix) {
      out.set(prefix, 0);
      o = prefix.length;
    }
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

/**
 * Why a received message could not be decoded as sent: the services answer INVALID_ARGUMENT with
 * `message` (a malformed message is the client's fault, never INTERNAL). `field` is the path of
 * the offending field as the services name fields (`step.input.shape[1]`), or the message type
 * when the bytes are not a valid protobuf encoding at all.
 */
export class DecodeProblem {
  readonly message: string;
  constructor(
    readonly field: string,
    readonly rule: string,
    readonly given: string,
  ) {
    this.message = `${field} ${rule}, given ${cut(given)}`;
  }
}

const DECODE_PROBLEM = Symbol('tandem.decodeProblem');

/** The problem a deserializer of this package found in `message`, if any (see {@link safeDeserialize}, {@link viewDeserialize}). */
export function decodeProblem(message: unknown): DecodeProblem | undefined {
  return typeof message === 'object' && message !== null ? (message as { [DECODE_PROBLEM]?: DecodeProblem })[DECODE_PROBLEM] : undefined;
}

function withProblem<T>(message: T, problem: DecodeProblem): T {
  Object.defineProperty(message, DECODE_PROBLEM, { value: problem, enumerable: false });
  return message;
}

/**
 * A reader that does not throw on a signed 64-bit value beyond ±(2^53-1): ts-proto's decoder
 * (forceLong=number) throws there, which grpc-js turns into a bare `INTERNAL: Error
 * deserializing request`. Such a value is remembered and decodes as NaN instead (a number
 * field, e.g. a tensor dimension, that no integer check accepts), so the deserializer can
 * name the field. uint64 fields of the session messages are exact strings (jstype =
 * JS_STRING, executor.proto) and pass through untouched.
 */
class SafeReader extends BinaryReader {
  readonly outOfRange: string[] = [];

  override int64(): bigint | string {
    const v = super.int64();
    const n = typeof v === 'bigint' ? v : BigInt(v);
    if (n > BigInt(Number.MAX_SAFE_INTEGER) || n < BigInt(Number.MIN_SAFE_INTEGER)) {
      this.outOfRange.push(n.toString());
      return 'NaN';
    }
    return v;
  }
}

/** A reader whose `bytes()` returns a small placeholder for large values and remembers a view of each. */
class ViewReader extends SafeReader {
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

/** A ts-proto field name as the proto names it (`stageBegin` is `stage_begin`): status messages use the proto's names. */
function protoFieldName(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/**
 * Path of the first NaN number in a decoded message, named as the services name fields (by
 * their proto names): a oneof (`{ $case, value }`) by its case (`kind.value.input` is
 * `step.input`), array items by index. Undefined when there is none.
 */
function nanPath(node: unknown, path: string, depth: number): string | undefined {
  if (typeof node === 'number') return Number.isNaN(node) ? path : undefined;
  if (depth > 100 || typeof node !== 'object' || node === null || ArrayBuffer.isView(node)) return undefined;
  if (Array.isArray(node)) {
    for (let i = 0; i < node.length; i++) {
      const p = nanPath(node[i], `${path}[${i}]`, depth + 1);
      if (p) return p;
    }
    return undefined;
  }
  const o = node as Record<string, unknown>;
  if (typeof o.$case === 'string' && 'value' in o) {
    const name = protoFieldName(o.$case);
    const base = path.includes('.') ? `${path.slice(0, path.lastIndexOf('.'))}.${name}` : name;
    return nanPath(o.value, base, depth + 1);
  }
  for (const [k, v] of Object.entries(o)) {
    const name = protoFieldName(k);
    const p = nanPath(v, path ? `${path}.${name}` : name, depth + 1);
    if (p) return p;
  }
  return undefined;
}

type Decoder<T> = { decode(input: BinaryReader | Uint8Array, length?: number): T };

/** `inputs[0].contents.int64Contents[3]` as the proto names it: `inputs[0].contents.int64_contents[3]`. */
function protoPath(path: string): string {
  return path.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/**
 * Decodes with `reader`, attaching a {@link DecodeProblem} for a 64-bit value out of range
 * (its field path in the proto's snake_case names when `protoFieldNames`).
 */
function decodeChecked<T>(fns: Decoder<T>, reader: SafeReader, finish: (m: T) => T, protoFieldNames = false): T {
  const message = finish(fns.decode(reader));
  if (reader.outOfRange.length === 0) return message;
  const path = nanPath(message, '', 0);
  const field = path === undefined ? 'a 64-bit integer field' : protoFieldNames ? protoPath(path) : path;
  return withProblem(message, new DecodeProblem(field, `must be an integer in ${Number.MIN_SAFE_INTEGER}..${Number.MAX_SAFE_INTEGER}`, reader.outOfRange[0]));
}

/**
 * The message a deserializer hands on when the bytes cannot be decoded at all (truncated, a
 * bad wire type, ...): the type's empty message carrying a {@link DecodeProblem} naming the
 * type, so the handler answers INVALID_ARGUMENT instead of grpc-js's bare INTERNAL.
 */
function undecodable<T>(empty: T, typeName: string, err: unknown): T {
  const why = err instanceof Error ? err.message : String(err);
  return withProblem(empty, new DecodeProblem(typeName, 'must be a valid protobuf encoding of the message', why));
}

/**
 * A grpc-js deserializer that never throws: bytes that do not decode give the empty message
 * with a {@link DecodeProblem} (read it with {@link decodeProblem}); a signed 64-bit value
 * beyond ±(2^53-1) decodes as NaN with a problem naming its field (in the proto's snake_case
 * names with `protoFieldNames`, for services whose callers know only the proto). Handlers
 * check `decodeProblem(request)` first and answer INVALID_ARGUMENT with its message.
 */
export function safeDeserialize<T>(fns: Decoder<T>, typeName: string, opts: { readonly protoFieldNames?: boolean } = {}): (buf: Buffer) => T {
  return (buf: Buffer): T => {
    try {
      return decodeChecked(fns, new SafeReader(buf), (m) => m, opts.protoFieldNames);
    } catch (err) {
      return undecodable(fns.decode(new Uint8Array(0)), typeName, err);
    }
  };
}

/**
 * A grpc-js deserializer for a ts-proto message type that decodes large `bytes` fields
 * ({@link GATHER_MIN_BYTES} or more) as views of the received buffer instead of copies. It runs
 * the generated decoder (so fields added to the proto later decode as before) with a reader that
 * hands out small placeholders for large values, then puts views where the placeholders landed;
 * if any placeholder is not found again, it decodes the message the ordinary way (copying).
 * Like {@link safeDeserialize} it never throws: a malformed message carries a {@link DecodeProblem}.
 * Ownership: the views share memory with the received message buffer, which grpc-js allocates
 * per message and never reuses; the decoded message owns it.
 */
export function viewDeserialize<T>(fns: Decoder<T>, typeName = 'message'): (buf: Buffer) => T {
  return (buf: Buffer): T => {
    try {
      const reader = new ViewReader(buf);
      let complete = true;
      const message = decodeChecked(fns, reader, (m) => {
        if (reader.views.length > 0) complete = substitute(m, reader.views, 0) === reader.views.length;
        return m;
      });
      if (complete) return message;
      return decodeChecked(fns, new SafeReader(buf), (m) => m);
    } catch (err) {
      return undecodable(fns.decode(new Uint8Array(0)), typeName, err);
    }
  };
}

/**
 * A grpc-js service definition whose request deserializers never throw (see
 * {@link safeDeserialize}): a request that does not decode reaches the handler as the empty
 * message carrying a {@link DecodeProblem} naming the request type, so the handler can answer
 * INVALID_ARGUMENT (grpc-js would answer a bare INTERNAL). Deserializers already safe are kept.
 */
export function safeService<S extends Record<string, { requestDeserialize: (buf: Buffer) => unknown; path: string }>>(service: S): S {
  const out: Record<string, unknown> = {};
  for (const [name, def] of Object.entries(service)) {
    const decode = def.requestDeserialize;
    const typeName = `${def.path.split('/').pop() ?? name} request`;
    out[name] = {
      ...def,
      requestDeserialize: (buf: Buffer): unknown => {
        try {
          return decode(buf);
        } catch (err) {
          return undecodable(decode(Buffer.alloc(0)), typeName, err);
        }
      },
    };
  }
  return out as S;
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
    requestDeserialize: viewDeserialize(SessionRequest, 'SessionRequest'),
    // Responses are serialized by grpc-js's server only, which copies each at once.
    responseSerialize: gatherSerialize(SessionResponse, { paddingField: PADDING_FIELD, reuseOutputUpTo: REUSED_RESPONSE_BYTES }),
    responseDeserialize: viewDeserialize(SessionResponse, 'SessionResponse'),
  },
  getStatus: {
    ...GeneratedExecutorServiceService.getStatus,
    requestDeserialize: safeDeserialize(GetStatusRequest, 'GetStatusRequest'),
  },
};

/** A client of {@link ExecutorServiceService} (the generated client interface, fast serializers). */
export type ExecutorServiceClient = GeneratedExecutorServiceClient;
export const ExecutorServiceClient = makeGenericClientConstructor(
  ExecutorServiceService,
  'tandem.executor.v1.ExecutorService',
) as unknown as typeof GeneratedExecutorServiceClient;
