import type { HostTensor } from '@tandem/protocol';
import { StageInputError } from './errors';

/** A float32 tensor in host memory. */
export type Float32Tensor = Extract<HostTensor, { dtype: 'float32' }>;

/**
 * The state one stage keeps for one sequence, as it moves between runners: between the client
 * and the server when a phased plan places the prefill and the decode apart (the executor's
 * `kv_put` / `kv_take`). `embed` keeps its token count (the position the next token gets); an
 * attention stage keeps its past keys and values; MLP and head stages keep nothing (their
 * count is the caller's). See {@link StageRunner.exportState} and {@link StageRunner.appendState}.
 */
export interface StageState {
  /** Positions the stage holds (>= 1 when appended): `embed`, the tokens embedded; attention, its past length. */
  readonly tokens: number;
  /** Attention stages: the past keys, float32 [1, nHead, tokens, headDim]; absent for `embed`. */
  readonly key?: Float32Tensor;
  /** Attention stages: the past values, as `key`; absent for `embed`. */
  readonly value?: Float32Tensor;
}

/**
 * Positions [from, to) of a key or value tensor [1, H, T, hd], as a new tensor [1, H, to - from, hd]
 * (a copy: one contiguous run per head). Used to cut a stage's KV into chunks of whole positions.
 * @throws StageInputError naming `t.shape`, `from` or `to` when they do not fit.
 */
export function slicePositions(t: Float32Tensor, from: number, to: number): Float32Tensor {
  const [b, H, T, hd] = kvShape(t, 't');
  if (!(Number.isInteger(from) && from >= 0 && from <= T)) throw new StageInputError('from', `be an integer in 0..${T}`, from);
  if (!(Number.isInteger(to) && to >= from && to <= T)) throw new StageInputError('to', `be an integer in ${from}..${T}`, to);
  const n = to - from;
  const out = new Float32Array(b * H * n * hd);
  for (let h = 0; h < b * H; h++) out.set(t.data.subarray((h * T + from) * hd, (h * T + to) * hd), h * n * hd);
  return { dtype: 'float32', shape: [b, H, n, hd], data: out };
}

/**
 * Key or value tensors [1, H, T_i, hd] joined along the positions, in order: [1, H, ΣT_i, hd]
 * (a new tensor). The inverse of cutting with {@link slicePositions}.
 * @throws StageInputError naming `parts` when there is none or their shapes differ beyond T.
 */
export function concatPositions(parts: readonly Float32Tensor[]): Float32Tensor {
  if (parts.length === 0) throw new StageInputError('parts', 'hold at least one tensor', '[]');
  const [b, H, , hd] = kvShape(parts[0], 'parts[0]');
  let total = 0;
  const lens = parts.map((p, i) => {
    const [pb, pH, pT, phd] = kvShape(p, `parts[${i}]`);
    if (pb !== b || pH !== H || phd !== hd) throw new StageInputError(`parts[${i}].shape`, `be [${b}, ${H}, T, ${hd}] like parts[0]`, p.shape);
    total += pT;
    return pT;
  });
  const out = new Float32Array(b * H * total * hd);
  for (let h = 0; h < b * H; h++) {
    let o = h * total * hd;
    parts.forEach((p, i) => {
      const len = lens[i] * hd;
      out.set(p.data.subarray(h * len, (h + 1) * len), o);
      o += len;
    });
  }
  return { dtype: 'float32', shape: [b, H, total, hd], data: out };
}

/** The shape of a 4-d float32 tensor whose data matches it. @throws StageInputError naming `field`. */
function kvShape(t: Float32Tensor, field: string): [number, number, number, number] {
  const s = t.shape;
  if (t.dtype !== 'float32' || !(t.data instanceof Float32Array)) throw new StageInputError(`${field}.dtype`, "be 'float32'", t.dtype);
  if (s.length !== 4 || !s.every((d) => Number.isInteger(d) && d >= 0)) throw new StageInputError(`${field}.shape`, 'be [1, nHead, T, headDim]', s);
  if (t.data.length !== s[0] * s[1] * s[2] * s[3])
    throw new StageInputError(`${field}.data`, `hold ${s[0] * s[1] * s[2] * s[3]} values (the shape's product)`, `${t.data.length} values`);
  return [s[0], s[1], s[2], s[3]];
}
