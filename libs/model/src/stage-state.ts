import type { HostTensor } from '@tandem/protocol';
import { StageInputError } from './errors';

/** A float32 host tensor (keys and values of an attention stage). */
export type Float32Tensor = Extract<HostTensor, { dtype: 'float32' }>;

/**
 * One stage's state in a cache, as it moves between the prefill and the decode of a phased plan
 * (the executor's KvPut / KvTake): the number of tokens the stage has taken and, for an
 * attention stage, its keys and values, float32 [1, nHead, tokens, headDim]. An embedding's
 * state is its count (the position the next token gets); an MLP or head stage keeps nothing but
 * its count, which a cache does not hold (the caller counts it).
 */
export interface StageState {
  readonly tokens: number;
  /** Attention stages: the keys of positions 0..tokens-1; absent for other stages. */
  readonly key?: Float32Tensor;
  /** Attention stages: the values, as `key`; absent for other stages. */
  readonly value?: Float32Tensor;
}

function checkKv(t: Float32Tensor, field: string): [number, number, number] {
  const s = t.shape;
  if (t.dtype !== 'float32' || s.length !== 4 || s[0] !== 1 || !(t.data instanceof Float32Array) || t.data.length !== s[1] * s[2] * s[3])
    throw new StageInputError(field, 'be a float32 tensor [1, nHead, T, headDim] whose data holds the shape product', { dtype: t.dtype, shape: s });
  return [s[1], s[2], s[3]];
}

/**
 * Positions [offset, offset + tokens) of keys or values [1, H, T, hd], as a new tensor
 * [1, H, tokens, hd] (a copy: the positions of one head are contiguous, the heads are not).
 * @throws StageInputError when the range is not within 0..T.
 */
export function kvSlice(t: Float32Tensor, offset: number, tokens: number): Float32Tensor {
  const [H, T, hd] = checkKv(t, 'kv');
  if (!Number.isInteger(offset) || !Number.isInteger(tokens) || offset < 0 || tokens < 1 || offset + tokens > T)
    throw new StageInputError('range', `be within the ${T} positions held (offset >= 0, tokens >= 1)`, { offset, tokens });
  if (offset === 0 && tokens === T) return { dtype: 'float32', shape: [1, H, T, hd], data: t.data.slice() };
  const out = new Float32Array(H * tokens * hd);
  for (let h = 0; h < H; h++) out.set(t.data.subarray((h * T + offset) * hd, (h * T + offset + tokens) * hd), h * tokens * hd);
  return { dtype: 'float32', shape: [1, H, tokens, hd], data: out };
}

/**
 * Joins keys or values [1, H, T_i, hd] along the positions, in order, into [1, H, ΣT_i, hd].
 * @throws StageInputError when there are none or their heads or head sizes differ.
 */
export function kvConcat(parts: readonly Float32Tensor[]): Float32Tensor {
  if (parts.length === 0) throw new StageInputError('parts', 'hold at least one tensor', parts);
  const dims = parts.map((p, i) => checkKv(p, `parts[${i}]`));
  const [H, , hd] = dims[0];
  const bad = dims.findIndex(([h, , d]) => h !== H || d !== hd);
  if (bad >= 0) throw new StageInputError(`parts[${bad}].shape`, `be [1, ${H}, T, ${hd}] like parts[0]`, parts[bad].shape);
  if (parts.length === 1) return { dtype: 'float32', shape: [1, H, dims[0][1], hd], data: parts[0].data.slice() };
  const total = dims.reduce((a, [, t]) => a + t, 0);
  const out = new Float32Array(H * total * hd);
  for (let h = 0; h < H; h++) {
    let at = 0;
    for (const [i, p] of parts.entries()) {
      const T = dims[i][1];
      out.set(p.data.subarray(h * T * hd, (h + 1) * T * hd), (h * total + at) * hd);
      at += T;
    }
  }
  return { dtype: 'float32', shape: [1, H, total, hd], data: out };
}

/** Positions per chunk so that a chunk's keys plus values take at most `maxBytes` (at least one position whatever the bound). */
export function kvChunkTokens(nHead: number, headDim: number, maxBytes: number): number {
  const perToken = 2 * 4 * nHead * headDim;
  return Math.max(1, Math.floor(maxBytes / perToken));
}
