import { promises as fsp } from 'node:fs';
import { ImportError } from './errors';

/** One tensor's entry in a safetensors header. */
export interface SafetensorsEntry {
  readonly name: string;
  /** safetensors dtype string: F32, F16, BF16, BOOL, I64, ... */
  readonly dtype: string;
  readonly shape: readonly number[];
  /** Byte range [begin, end) relative to the start of the data section. */
  readonly begin: number;
  readonly end: number;
}

const DTYPE_BYTES: Readonly<Record<string, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
};

/**
 * A safetensors file opened for random access: an 8-byte little-endian header length, a JSON
 * header `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {...}}`, then the raw
 * little-endian data. Only the header is read up front; tensors are read one at a time.
 */
export class SafetensorsFile {
  private constructor(
    private readonly fh: fsp.FileHandle,
    private readonly dataStart: number,
    /** Every tensor of the file by name (the `__metadata__` entry excluded). */
    readonly entries: ReadonlyMap<string, SafetensorsEntry>,
  ) {}

  /**
   * Opens `file` and parses its header.
   * @throws ImportError (field `model.safetensors`) when the header is malformed or an entry's
   *   byte range does not fit the file.
   */
  static async open(file: string, label = 'model.safetensors'): Promise<SafetensorsFile> {
    const fh = await fsp.open(file, 'r');
    try {
      const size = (await fh.stat()).size;
      const head = Buffer.alloc(8);
      if (size < 8 || (await fh.read(head, 0, 8, 0)).bytesRead !== 8) throw new ImportError(label, 'start with an 8-byte header length', `${size} bytes`);
      const headerLen = Number(head.readBigUInt64LE(0));
      if (headerLen < 2 || 8 + headerLen > size || headerLen > 100 * 1024 * 1024) {
        throw new ImportError(label, `have a header length within the file (${size} bytes)`, headerLen);
      }
      const hb = Buffer.alloc(headerLen);
      await fh.read(hb, 0, headerLen, 8);
      let header: unknown;
      try {
        header = JSON.parse(hb.toString('utf8'));
      } catch (err) {
        throw new ImportError(`${label} header`, 'be valid JSON', (err as Error).message, { cause: err });
      }
      if (typeof header !== 'object' || header === null || Array.isArray(header)) throw new ImportError(`${label} header`, 'be a JSON object', header);
      const dataStart = 8 + headerLen;
      const dataLen = size - dataStart;
      const entries = new Map<string, SafetensorsEntry>();
      for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
        if (name === '__metadata__') continue;
        const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
        const shape = e?.shape;
        const offs = e?.data_offsets;
        if (
          typeof e?.dtype !== 'string' ||
          !Array.isArray(shape) ||
          !shape.every((d) => Number.isInteger(d) && d >= 0) ||
          !Array.isArray(offs) ||
          offs.length !== 2 ||
          !offs.every((d) => Number.isInteger(d) && d >= 0) ||
          offs[0] > offs[1] ||
          offs[1] > dataLen
        ) {
          throw new ImportError(`${label} entry ${name}`, `have a dtype, a shape and data_offsets within the data (${dataLen} bytes)`, v);
        }
        entries.set(name, { name, dtype: e.dtype, shape: shape as number[], begin: offs[0] as number, end: offs[1] as number });
      }
      return new SafetensorsFile(fh, dataStart, entries);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /**
   * Reads tensor `name` as float32, converting F16 and BF16.
   * @throws ImportError when the dtype is not F32/F16/BF16 or the byte length does not match the shape.
   */
  async readFloat32(name: string): Promise<Float32Array> {
    const e = this.entries.get(name);
    if (!e) throw new ImportError(name, 'be present', 'missing');
    const count = e.shape.reduce((a, b) => a * b, 1);
    const width = DTYPE_BYTES[e.dtype];
    if (e.dtype !== 'F32' && e.dtype !== 'F16' && e.dtype !== 'BF16') throw new ImportError(`${name} dtype`, 'be F32, F16 or BF16', e.dtype);
    if (e.end - e.begin !== count * width) {
      throw new ImportError(`${name} data_offsets`, `span ${count * width} bytes (${count} ${e.dtype} values)`, `${e.end - e.begin} bytes`);
    }
    // A fresh ArrayBuffer is 8-aligned, so typed views over it need no copy.
    const bytes = new Uint8Array(count * width);
    let done = 0;
    while (done < bytes.length) {
      const { bytesRead } = await this.fh.read(bytes, done, bytes.length - done, this.dataStart + e.begin + done);
      if (bytesRead === 0) throw new ImportError(name, 'be fully present in the file', `${done} of ${bytes.length} bytes`);
      done += bytesRead;
    }
    if (e.dtype === 'F32') return new Float32Array(bytes.buffer, 0, count);
    const half = new Uint16Array(bytes.buffer, 0, count);
    return e.dtype === 'BF16' ? bf16ToF32(half) : f16ToF32(half);
  }

  /** Closes the file. */
  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** bfloat16 → float32: the 16 bits are the float32's high half. */
export function bf16ToF32(src: Uint16Array): Float32Array {
  const bits = new Uint32Array(src.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return new Float32Array(bits.buffer);
}

/** IEEE half → float32, exact (subnormals, infinities and NaN included). */
export function f16ToF32(src: Uint16Array): Float32Array {
  const bits = new Uint32Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const h = src[i];
    const sign = (h & 0x8000) << 16;
    const exp = (h >> 10) & 0x1f;
    let mant = h & 0x3ff;
    if (exp === 0x1f) bits[i] = sign | 0x7f800000 | (mant << 13);
    else if (exp !== 0) bits[i] = sign | ((exp + 112) << 23) | (mant << 13);
    else if (mant === 0) bits[i] = sign;
    else {
      // Subnormal half: normalise the mantissa into a float32 normal.
      let e = 113;
      while ((mant & 0x400) === 0) {
        mant <<= 1;
        e--;
      }
      bits[i] = sign | (e << 23) | ((mant & 0x3ff) << 13);
    }
  }
  return new Float32Array(bits.buffer);
}
