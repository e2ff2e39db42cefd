import type { ModelConfig } from './config';
import type { StageSlot } from './manifest';
import { type ExternalRef, GraphBuilder } from './onnx-graph';

/** A weight tensor of the model, named as in Hugging Face GPT-2 (without the `transformer.` prefix). */
export interface WeightSpec {
  readonly name: string;
  readonly dims: readonly number[];
}

/** The shared tied embedding's name; its data file is written once and used by `embed` and `head`. */
export const WTE = 'wte.weight';

/** A layer norm's scale and shift over `D` channels: `<name>.weight` and `<name>.bias`. */
const layerNorm = (name: string, D: number): WeightSpec[] => [
  { name: `${name}.weight`, dims: [D] },
  { name: `${name}.bias`, dims: [D] },
];

/** A linear layer from `nIn` to `nOut` channels (GPT-2's Conv1D, its weight stored [in, out]): `<name>.weight` and `<name>.bias`. */
const linear = (name: string, nIn: number, nOut: number): WeightSpec[] => [
  { name: `${name}.weight`, dims: [nIn, nOut] },
  { name: `${name}.bias`, dims: [nOut] },
];

/**
 * The weights stage `slot` needs, in the order they are written to its data file. `embed` and
 * `head` both list {@link WTE}, which lives in the shared `wte.bin`.
 */
export function stageWeights(slot: StageSlot, c: ModelConfig): WeightSpec[] {
  const D = c.nEmbd;
  switch (slot.kind) {
    case 'embed':
      return [
        { name: WTE, dims: [c.vocabSize, D] },
        { name: 'wpe.weight', dims: [c.nPositions, D] },
      ];
    case 'head':
      return [...layerNorm('ln_f', D), { name: WTE, dims: [c.vocabSize, D] }];
    case 'attn': {
      const p = `h.${slot.layer}`;
      return [...layerNorm(`${p}.ln_1`, D), ...linear(`${p}.attn.c_attn`, D, 3 * D), ...linear(`${p}.attn.c_proj`, D, D)];
    }
    case 'mlp': {
      const p = `h.${slot.layer}`;
      return [...layerNorm(`${p}.ln_2`, D), ...linear(`${p}.mlp.c_fc`, D, 4 * D), ...linear(`${p}.mlp.c_proj`, 4 * D, D)];
    }
  }
}

/** Every weight of the model in canonical order (wte first, then per stage), each listed once. */
export function allWeights(c: ModelConfig, slots: readonly StageSlot[]): WeightSpec[] {
  const seen = new Set<string>();
  const out: WeightSpec[] = [];
  for (const s of slots)
    for (const w of stageWeights(s, c))
      if (!seen.has(w.name)) {
        seen.add(w.name);
        out.push(w);
      }
  return out;
}

/** Names of the graph inputs/outputs, shared by the builder and the runner. */
export const IO = {
  inputIds: 'input_ids',
  positionIds: 'position_ids',
  hidden: 'hidden',
  hiddenOut: 'hidden_out',
  pastKey: 'past_key',
  pastValue: 'past_value',
  presentKey: 'present_key',
  presentValue: 'present_value',
  logits: 'logits',
} as const;

/**
 * Builds the ONNX graph of one stage. Weights are external initializers named after their
 * Hugging Face names; `refs` says where each one is stored.
 *
 * - embed: `input_ids`, `position_ids` int64 [B,T] → `hidden` [B,T,D] = wte[ids] + wpe[positions].
 * - attn: `hidden` [B,T,D], `past_key`/`past_value` [B,H,P,Dh] → `hidden_out` = h + attn(ln_1(h)),
 *   `present_key`/`present_value` [B,H,P+T,Dh]; ONNX `Attention` (opset 23) with `is_causal`, whose
 *   mask is aligned to the end of the key sequence, so T new tokens see the P cached ones.
 * - mlp: `hidden` → `hidden_out` = h + c_proj(gelu_tanh(c_fc(ln_2(h)))).
 * - head: `hidden` → `logits` [B,T,V] = ln_f(h)·wteᵀ (Gemm with transB on a [B*T,D] view, so the
 *   tied embedding is used as stored, no transposed copy on disk).
 */
export function buildStageGraph(slot: StageSlot, c: ModelConfig, refs: ReadonlyMap<string, ExternalRef>): Uint8Array {
  const g = new GraphBuilder(slot.name);
  const D = c.nEmbd;
  const H = c.nHead;
  const Dh = D / H;
  const w = (name: string, dims: readonly number[]): string => {
    const ref = refs.get(name);
    if (!ref) throw new Error(`internal: no data reference for weight ${name}`);
    return g.externalF32(name, dims, ref);
  };
  const ln = (x: string, prefix: string): string =>
    g.op1('LayerNormalization', [x, w(`${prefix}.weight`, [D]), w(`${prefix}.bias`, [D])], { axis: -1, epsilon: { float: c.layerNormEpsilon } });
  const linear = (x: string, prefix: string, din: number, dout: number): string =>
    g.op1('Add', [g.op1('MatMul', [x, w(`${prefix}.weight`, [din, dout])]), w(`${prefix}.bias`, [dout])]);
  const hiddenShape = ['batch', 'seq', D];

  switch (slot.kind) {
    case 'embed': {
      const ids = g.inputI64(IO.inputIds, ['batch', 'seq']);
      const pos = g.inputI64(IO.positionIds, ['batch', 'seq']);
      const tok = g.op1('Gather', [w(WTE, [c.vocabSize, D]), ids], { axis: 0 });
      const pe = g.op1('Gather', [w('wpe.weight', [c.nPositions, D]), pos], { axis: 0 });
      g.outputF32(IO.hidden, g.op1('Add', [tok, pe]), hiddenShape);
      break;
    }
    case 'attn': {
      const p = `h.${slot.layer}`;
      const h = g.inputF32(IO.hidden, hiddenShape);
      const pk = g.inputF32(IO.pastKey, ['batch', H, 'past', Dh]);
      const pv = g.inputF32(IO.pastValue, ['batch', H, 'past', Dh]);
      const qkv = linear(ln(h, `${p}.ln_1`), `${p}.attn.c_attn`, D, 3 * D);
      const [q, k, v] = g.op('Split', [qkv], { axis: -1, num_outputs: 3 }, 3);
      const [y, presentK, presentV] = g.op('Attention', [q, k, v, '', pk, pv], { q_num_heads: H, kv_num_heads: H, is_causal: 1 }, 3);
      const o = linear(y, `${p}.attn.c_proj`, D, D);
      g.outputF32(IO.hiddenOut, g.op1('Add', [h, o]), hiddenShape);
      g.outputF32(IO.presentKey, presentK, ['batch', H, 'total', Dh]);
      g.outputF32(IO.presentValue, presentV, ['batch', H, 'total', Dh]);
      break;
    }
    case 'mlp': {
      const p = `h.${slot.layer}`;
      const h = g.inputF32(IO.hidden, hiddenShape);
      const up = linear(ln(h, `${p}.ln_2`), `${p}.mlp.c_fc`, D, 4 * D);
      const act = g.op1('Gelu', [up], { approximate: 'tanh' });
      const o = linear(act, `${p}.mlp.c_proj`, 4 * D, D);
      g.outputF32(IO.hiddenOut, g.op1('Add', [h, o]), hiddenShape);
      break;
    }
    case 'head': {
      const h = g.inputF32(IO.hidden, hiddenShape);
      const x = ln(h, 'ln_f');
      const flat = g.op1('Reshape', [x, g.constI64([-1, D])]);
      const logits2d = g.op1('Gemm', [flat, w(WTE, [c.vocabSize, D])], { transB: 1 });
      const bt = g.op1('Shape', [h], { start: 0, end: 2 });
      const outShape = g.op1('Concat', [bt, g.constI64([c.vocabSize])], { axis: 0 });
      g.outputF32(IO.logits, g.op1('Reshape', [logits2d, outShape]), ['batch', 'seq', c.vocabSize]);
      break;
    }
  }
  return g.encode();
}
