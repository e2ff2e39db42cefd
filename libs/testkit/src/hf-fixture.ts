/**
 * Test helpers: writes Hugging Face style GPT-2 checkpoints (config.json + model.safetensors) and
 * computes GPT-2 logits in float64 with plain loops, independently of the library's ONNX graphs.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { seededRandom } from '@tandem/util';

export interface HfConfig {
  vocab_size: number;
  n_positions: number;
  n_embd: number;
  n_layer: number;
  n_head: number;
  layer_norm_epsilon: number;
}

export const SMALL_HF_CONFIG: HfConfig = { vocab_size: 300, n_positions: 32, n_embd: 32, n_layer: 2, n_head: 4, layer_norm_epsilon: 1e-5 };

/** Weights as float64 values, by HF name without prefix. */
export type Weights = Map<string, { shape: number[]; values: Float64Array }>;

export type Dtype = 'F32' | 'F16' | 'BF16';

const rng = seededRandom;

/** The tensors of a GPT-2 checkpoint with their shapes (no prefix). */
export function gpt2Shapes(c: HfConfig): [string, number[]][] {
  const D = c.n_embd;
  const out: [string, number[]][] = [
    ['wte.weight', [c.vocab_size, D]],
    ['wpe.weight', [c.n_positions, D]],
  ];
  for (let i = 0; i < c.n_layer; i++) {
    out.push(
      [`h.${i}.ln_1.weight`, [D]],
      [`h.${i}.ln_1.bias`, [D]],
      [`h.${i}.attn.c_attn.weight`, [D, 3 * D]],
      [`h.${i}.attn.c_attn.bias`, [3 * D]],
      [`h.${i}.attn.c_proj.weight`, [D, D]],
      [`h.${i}.attn.c_proj.bias`, [D]],
      [`h.${i}.ln_2.weight`, [D]],
      [`h.${i}.ln_2.bias`, [D]],
      [`h.${i}.mlp.c_fc.weight`, [D, 4 * D]],
      [`h.${i}.mlp.c_fc.bias`, [4 * D]],
      [`h.${i}.mlp.c_proj.weight`, [4 * D, D]],
      [`h.${i}.mlp.c_proj.bias`, [D]],
    );
  }
  out.push(['ln_f.weight', [D]], ['ln_f.bias', [D]]);
  return out;
}

/** Random weights, large enough (std 0.15, LN weights around 1) that attention is far from uniform. */
export function randomWeights(c: HfConfig, seed: number): Weights {
  const r = rng(seed);
  const normal = (): number => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  const w: Weights = new Map();
  for (const [name, shape] of gpt2Shapes(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const values = new Float64Array(n);
    const isLnWeight = /ln_(1|2|f)\.weight$/.test(name);
    for (let i = 0; i < n; i++) values[i] = isLnWeight ? 1 + 0.2 * normal() : 0.15 * normal();
    w.set(name, { shape, values });
  }
  return w;
}

/** Encodes x as IEEE half bits (round to nearest) and returns [bits, exact value of those bits]. */
function toHalf(x: number): [number, number] {
  const sign = x < 0 || Object.is(x, -0) ? 1 : 0;
  const a = Math.abs(x);
  let e: number;
  let m: number;
  if (a < 2 ** -14) {
    e = 0;
    m = Math.round(a / 2 ** -24);
    if (m === 1024) {
      e = 1;
      m = 0;
    }
  } else {
    e = Math.floor(Math.log2(a));
    m = Math.round((a / 2 ** e - 1) * 1024);
    if (m === 1024) {
      e++;
      m = 0;
    }
    e += 15;
    if (e >= 31) throw new Error(`value ${x} overflows half`);
  }
  const value = (sign ? -1 : 1) * (e === 0 ? m * 2 ** -24 : 2 ** (e - 15) * (1 + m / 1024));
  return [(sign << 15) | (e << 10) | m, value];
}

/** Truncates x to bfloat16 and returns [bits, exact value of those bits]. */
function toBf16(x: number): [number, number] {
  const dv = new DataView(new ArrayBuffer(4));
  dv.setFloat32(0, x, true);
  const bits = dv.getUint32(0, true) >>> 16;
  dv.setUint32(0, bits << 16, true);
  return [bits, dv.getFloat32(0, true)];
}

export interface FixtureOptions {
  dtype?: Dtype;
  prefix?: boolean;
  /** Add `h.{i}.attn.bias` as a BOOL [1,1,P,P] causal mask buffer and a `masked_bias` F32 scalar. */
  boolAttnBias?: boolean;
  /** Add a tied `lm_head.weight` copy. */
  lmHead?: boolean;
  /** Drop these tensors (names without prefix). */
  omit?: string[];
  /** Override shapes of these tensors (names without prefix); data is random of the new size. */
  reshape?: Record<string, number[]>;
  /** Extra/overriding config.json fields. */
  configPatch?: Record<string, unknown>;
}

/**
 * Writes `dir/config.json` and `dir/model.safetensors` for `weights` stored as `dtype`, and
 * returns the weights as actually stored (rounded to the dtype), for the reference forward.
 */
export function writeHfFixture(dir: string, c: HfConfig, weights: Weights, opts: FixtureOptions = {}): Weights {
  const dtype = opts.dtype ?? 'F32';
  const pre = opts.prefix ? 'transformer.' : '';
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    path.join(dir, 'config.json'),
    JSON.stringify(
      {
        activation_function: 'gelu_new',
        architectures: ['GPT2LMHeadModel'],
        model_type: 'gpt2',
        n_ctx: c.n_positions,
        n_inner: null,
        ...c,
        ...opts.configPatch,
      },
      null,
      2,
    ),
  );
  const stored: Weights = new Map();
  const entries: { name: string; dtype: string; shape: number[]; bytes: Uint8Array }[] = [];
  for (const [name, { shape, values }] of weights) {
    if (opts.omit?.includes(name)) continue;
    const shapeOut = opts.reshape?.[name] ?? shape;
    const n = shapeOut.reduce((a, b) => a * b, 1);
    const src = shapeOut === shape ? values : new Float64Array(n).map((_, i) => values[i % values.length]);
    const out = new Float64Array(n);
    let bytes: Uint8Array;
    if (dtype === 'F32') {
      const f = Float32Array.from(src);
      out.set(f);
      bytes = new Uint8Array(f.buffer);
    } else {
      const u = new Uint16Array(n);
      for (let i = 0; i < n; i++) [u[i], out[i]] = dtype === 'F16' ? toHalf(src[i]) : toBf16(src[i]);
      bytes = new Uint8Array(u.buffer);
    }
    stored.set(name, { shape: shapeOut, values: out });
    entries.push({ name: pre + name, dtype, shape: shapeOut, bytes });
  }
  if (opts.boolAttnBias) {
    const P = c.n_positions;
    for (let i = 0; i < c.n_layer; i++) {
      const mask = new Uint8Array(P * P);
      for (let r = 0; r < P; r++) for (let k = 0; k <= r; k++) mask[r * P + k] = 1;
      entries.push({ name: `${pre}h.${i}.attn.bias`, dtype: 'BOOL', shape: [1, 1, P, P], bytes: mask });
      entries.push({ name: `${pre}h.${i}.attn.masked_bias`, dtype: 'F32', shape: [], bytes: new Uint8Array(Float32Array.of(-1e4).buffer) });
    }
  }
  if (opts.lmHead) {
    const wte = stored.get('wte.weight');
    if (wte) entries.push({ name: 'lm_head.weight', dtype: 'F32', shape: wte.shape, bytes: new Uint8Array(Float32Array.from(wte.values).buffer) });
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), entries);
  return stored;
}

/** Writes a safetensors file: 8-byte LE header length, JSON header (space-padded to 8 bytes), data. */
export function writeSafetensors(file: string, entries: { name: string; dtype: string; shape: number[]; bytes: Uint8Array }[]): void {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const e of entries) {
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + e.bytes.length] };
    offset += e.bytes.length;
  }
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += ' ';
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  writeFileSync(file, Buffer.concat([len, Buffer.from(json), ...entries.map((e) => Buffer.from(e.bytes.buffer, e.bytes.byteOffset, e.bytes.byteLength))]));
}

function layerNorm(x: Float64Array, g: Float64Array, b: Float64Array, eps: number): Float64Array {
  const n = x.length;
  let mean = 0;
  for (const v of x) mean += v;
  mean /= n;
  let varr = 0;
  for (const v of x) varr += (v - mean) ** 2;
  varr /= n;
  const inv = 1 / Math.sqrt(varr + eps);
  return x.map((v, i) => (v - mean) * inv * g[i] + b[i]);
}

function linear(x: Float64Array, w: Float64Array, b: Float64Array, din: number, dout: number): Float64Array {
  const y = Float64Array.from(b);
  for (let i = 0; i < din; i++) {
    const xi = x[i];
    for (let j = 0; j < dout; j++) y[j] += xi * w[i * dout + j];
  }
  return y;
}

const geluTanh = (x: number): number => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

/** GPT-2 logits [T, V] for `ids` in float64 (causal attention, gelu_new, tied head). */
export function referenceLogits(c: HfConfig, w: Weights, ids: readonly number[]): Float64Array {
  const D = c.n_embd;
  const H = c.n_head;
  const Dh = D / H;
  const T = ids.length;
  const W = (n: string): Float64Array => (w.get(n) as { values: Float64Array }).values;
  let h = ids.map((id, t) => {
    const v = new Float64Array(D);
    for (let d = 0; d < D; d++) v[d] = W('wte.weight')[id * D + d] + W('wpe.weight')[t * D + d];
    return v;
  });
  for (let l = 0; l < c.n_layer; l++) {
    const p = `h.${l}`;
    const qkv = h.map((x) =>
      linear(
        layerNorm(x, W(`${p}.ln_1.weight`), W(`${p}.ln_1.bias`), c.layer_norm_epsilon),
        W(`${p}.attn.c_attn.weight`),
        W(`${p}.attn.c_attn.bias`),
        D,
        3 * D,
      ),
    );
    const y = h.map(() => new Float64Array(D));
    for (let hd = 0; hd < H; hd++) {
      for (let t = 0; t < T; t++) {
        const scores = new Float64Array(t + 1);
        for (let s = 0; s <= t; s++) {
          let dot = 0;
          for (let d = 0; d < Dh; d++) dot += qkv[t][hd * Dh + d] * qkv[s][D + hd * Dh + d];
          scores[s] = dot / Math.sqrt(Dh);
        }
        const mx = Math.max(...scores);
        const e = scores.map((v) => Math.exp(v - mx));
        const sum = e.reduce((a, b) => a + b, 0);
        for (let s = 0; s <= t; s++) for (let d = 0; d < Dh; d++) y[t][hd * Dh + d] += (e[s] / sum) * qkv[s][2 * D + hd * Dh + d];
      }
    }
    h = h.map((x, t) => {
      const o = linear(y[t], W(`${p}.attn.c_proj.weight`), W(`${p}.attn.c_proj.bias`), D, D);
      return x.map((v, i) => v + o[i]);
    });
    h = h.map((x) => {
      const f = linear(
        layerNorm(x, W(`${p}.ln_2.weight`), W(`${p}.ln_2.bias`), c.layer_norm_epsilon),
        W(`${p}.mlp.c_fc.weight`),
        W(`${p}.mlp.c_fc.bias`),
        D,
        4 * D,
      ).map(geluTanh);
      const o = linear(f, W(`${p}.mlp.c_proj.weight`), W(`${p}.mlp.c_proj.bias`), 4 * D, D);
      return x.map((v, i) => v + o[i]);
    });
  }
  const V = c.vocab_size;
  const out = new Float64Array(T * V);
  h.forEach((x, t) => {
    const z = layerNorm(x, W('ln_f.weight'), W('ln_f.bias'), c.layer_norm_epsilon);
    for (let v = 0; v < V; v++) {
      let s = 0;
      for (let d = 0; d < D; d++) s += z[d] * W('wte.weight')[v * D + d];
      out[t * V + v] = s;
    }
  });
  return out;
}

/** max |a - b| over two equally long arrays. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
