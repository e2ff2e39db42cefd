import { DataType, type Tensor } from './generated/tandem/tensor/v1/tensor';
import { cut, renderShape } from './render';

/** A tensor in host memory, as the model runner uses it. */
export type HostTensor =
  | { readonly dtype: 'float32'; readonly shape: readonly number[]; readonly data: Float32Array }
  | { readonly dtype: 'int64'; readonly shape: readonly number[]; readonly data: BigInt64Array };

/** A wire tensor that breaks a rule; `field` is the path of the offending field. */
export class TensorFormatError extends Error {
  override name = 'TensorFormatError';
  constructor(
    readonly field: string,
    readonly rule: string,
    readonly given: string,
  ) {
    super(`${field} ${rule}, given ${cut(given)}`);
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * Encodes a host tensor for the wire without copying: the Buffer is a view of the typed array
 * (little-endian hosts only; never a copy on x86/ARM Linux). Ownership: the wire tensor shares
 * the host tensor's memory until the message is serialized, so the caller must not change the
 * host tensor's data before the message carrying it has been written (grpc-js serializes on
 * `write()`, or later when it queues the message while the call starts). The serializers of
 * this package copy the bytes then; after that the host tensor is free again.
 */
export function toWireTensor(t: HostTensor): Tensor {
  if (!LITTLE_ENDIAN) throw new Error('big-endian hosts are not supported');
  const data = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  return { dtype: t.dtype === 'float32' ? DataType.DATA_TYPE_FLOAT32 : DataType.DATA_TYPE_INT64, shape: [...t.shape], data };
}

/**
 * Decodes and validates a wire tensor: dtype known, every dimension a non-negative
 * integer, byte length equal to elements × element size, at most `maxElements` elements.
 *
 * No copy when the bytes are aligned for the element type (4 bytes for float32, 8 for int64):
 * the result is then a view of `t.data`. The generated decoder gives every `bytes` field its
 * own freshly allocated Buffer (own ArrayBuffer, or an 8-byte-aligned slice of Node's pool), so
 * decoded wire tensors are always aligned and never copied here. Misaligned bytes (a tensor
 * built over an arbitrary slice) are copied into aligned memory.
 * Ownership: the result may share memory with `t.data`; the decoded message owns that memory
 * and nothing else writes to it, so the result is the caller's (changing it changes `t.data`).
 * @param field path used in error messages, e.g. `step.input`.
 * @throws TensorFormatError naming the field, the rule and the value given.
 */
export function fromWireTensor(t: Tensor | undefined, field: string, maxElements = 1 << 28): HostTensor {
  if (!t) throw new TensorFormatError(field, 'is required', 'nothing');
  const size = t.dtype === DataType.DATA_TYPE_FLOAT32 ? 4 : t.dtype === DataType.DATA_TYPE_INT64 ? 8 : 0;
  if (size === 0) throw new TensorFormatError(`${field}.dtype`, 'must be DATA_TYPE_FLOAT32 or DATA_TYPE_INT64', String(t.dtype));
  t.shape.forEach((d, i) => {
    if (!Number.isSafeInteger(d) || d < 0) throw new TensorFormatError(`${field}.shape[${i}]`, 'must be an integer >= 0', String(d));
  });
  const n = elementCount(t.shape);
  if (n > maxElements) throw new TensorFormatError(`${field}.shape`, `must have at most ${maxElements} elements`, renderShape(t.shape, ','));
  if (t.data.byteLength !== n * size) {
    throw new TensorFormatError(
      `${field}.data`,
      `must hold ${n * size} bytes for shape ${renderShape(t.shape, ',')} of ${size}-byte elements`,
      `${t.data.byteLength} bytes`,
    );
  }
  let buffer: ArrayBufferLike = t.data.buffer;
  let offset = t.data.byteOffset;
  if (offset % size !== 0) {
    const copy = new ArrayBuffer(n * size);
    new Uint8Array(copy).set(t.data);
    buffer = copy;
    offset = 0;
  }
  return size === 4
    ? { dtype: 'float32', shape: [...t.shape], data: new Float32Array(buffer, offset, n) }
    : { dtype: 'int64', shape: [...t.shape], data: new BigInt64Array(buffer, offset, n) };
}

/**
 * Index of the first element of `data` that is NaN or ±Infinity, or -1 when every element is
 * finite. One pass over the raw bits (exponent all ones), no float compares: about as cheap as
 * reading the data once.
 */
export function firstNonFinite(data: Float32Array): number {
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const n = bits.length;
  for (let i = 0; i < n; i++) {
    if ((bits[i] & 0x7f800000) === 0x7f800000) return i;
  }
  return -1;
}
