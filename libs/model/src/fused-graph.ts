import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { onnx } from 'onnx-proto';
import { ModelOptionError } from './errors';
import type { Manifest } from './manifest';
import { IO } from './stage-graphs';

/** Names of a fused range graph's extra inputs/outputs (beside {@link IO}'s). */
export const FUSED_IO = {
  /** `past_key.{stage}` [1,H,P,Dh]: the past keys of attention stage `stage`. */
  pastKey: (stage: number): string => `${IO.pastKey}.${stage}`,
  pastValue: (stage: number): string => `${IO.pastValue}.${stage}`,
  presentKey: (stage: number): string => `${IO.presentKey}.${stage}`,
  presentValue: (stage: number): string => `${IO.presentValue}.${stage}`,
  /**
   * int64 [1], ranges ending with the head only: the first position the head computes (0 for
   * every position, T-1 for the last one). The head is position-wise, so its rows equal the
   * per-stage head's on the same rows.
   */
  headStart: 'head_start',
} as const;

const DT = onnx.TensorProto.DataType;

/**
 * Composes the on-disk stage graphs `begin..end-1` of a model into ONE ONNX graph: each stage's
 * nodes unchanged (its internal values prefixed with `s{index}/`), the hidden state wired from
 * one stage to the next, every attention stage's past/present K/V exposed as
 * {@link FUSED_IO}`.pastKey(i)`... inputs/outputs, and the same external weights (each stage's
 * initializers keep their names and data references; the tied `wte` of embed and head is
 * declared once). Data locations are rewritten relative to the model directory, so a session
 * made from the returned bytes needs
 * `session.model_external_initializers_file_folder_path = dir` (see {@link fusedSessionConfig}).
 *
 * Inputs: those of stage `begin` (`input_ids` + `position_ids`, or `hidden`), then per attention
 * stage its past K/V, then `head_start` when the range ends with the head. Outputs: the last
 * stage's (`hidden`, `hidden_out` or `logits`), then per attention stage its present K/V.
 * @throws ModelOptionError when the range is empty or outside the model; a stage file that is
 *   not a valid ONNX model fails with onnx-proto's decode error.
 */
export async function buildFusedGraph(dir: string, manifest: Manifest, begin: number, end: number): Promise<Uint8Array> {
  const n = manifest.stages.length;
  if (!Number.isInteger(begin) || !Number.isInteger(end) || begin < 0 || end > n || begin >= end) {
    throw new ModelOptionError('range', `be stage indices 0 <= begin < end <= ${n}`, `${begin}..${end}`);
  }
  const nodes: onnx.INodeProto[] = [];
  const inits = new Map<string, onnx.ITensorProto>();
  const inputs: onnx.IValueInfoProto[] = [];
  const outputs: onnx.IValueInfoProto[] = [];
  const kvOutputs: onnx.IValueInfoProto[] = [];
  let hidden = ''; // the value carrying the hidden state into the next stage
  let opset: onnx.IOperatorSetIdProto[] = [];
  let irVersion: onnx.IModelProto['irVersion'] = 8;

  for (let i = begin; i < end; i++) {
    const info = manifest.stages[i];
    const model = onnx.ModelProto.decode(await fsp.readFile(path.join(dir, info.file)));
    const g = model.graph as onnx.IGraphProto;
    if (i === begin) {
      opset = model.opsetImport ?? [];
      irVersion = model.irVersion ?? 8;
    }
    const prefix = `s${i}/`;
    const rename = new Map<string, string>();
    const stageDir = path.posix.dirname(info.file);
    for (const t of g.initializer ?? []) {
      const external = t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL;
      if (!external) {
        rename.set(t.name as string, prefix + t.name);
        inits.set(prefix + t.name, { ...t, name: prefix + t.name });
        continue;
      }
      rename.set(t.name as string, t.name as string);
      const data = (t.externalData ?? []).map((e) => (e.key === 'location' ? { key: 'location', value: path.posix.join(stageDir, e.value as string) } : e));
      const prev = inits.get(t.name as string);
      if (prev && JSON.stringify(prev.externalData) !== JSON.stringify(data)) {
        throw new Error(`internal: weight ${t.name} is stored in two places (stage ${info.name} and an earlier one)`);
      }
      inits.set(t.name as string, { ...t, externalData: data });
    }
    const isHead = info.kind === 'head';
    for (const v of g.input ?? []) {
      const name = v.name as string;
      if (name === IO.hidden && i > begin) {
        rename.set(name, hidden);
      } else if (name === IO.pastKey || name === IO.pastValue) {
        const fused = name === IO.pastKey ? FUSED_IO.pastKey(i) : FUSED_IO.pastValue(i);
        rename.set(name, fused);
        inputs.push({ ...v, name: fused });
      } else {
        inputs.push(v);
        rename.set(name, name);
      }
    }
    if (isHead) {
      // Slice the rows the head computes: h[:, head_start:, :].
      const into = rename.get(IO.hidden) as string;
      inputs.push({ name: FUSED_IO.headStart, type: { tensorType: { elemType: DT.INT64, shape: { dim: [{ dimValue: 1 }] } } } });
      const ends = `${prefix}head_end`;
      const axes = `${prefix}head_axes`;
      inits.set(ends, { name: ends, dataType: DT.INT64, dims: [1], rawData: Buffer.from(BigInt64Array.of(1n << 62n).buffer) });
      inits.set(axes, { name: axes, dataType: DT.INT64, dims: [1], rawData: Buffer.from(BigInt64Array.of(1n).buffer) });
      const sliced = `${prefix}head_rows`;
      nodes.push({ opType: 'Slice', domain: '', name: `${prefix}n_head_rows`, input: [into, FUSED_IO.headStart, ends, axes], output: [sliced] });
      rename.set(IO.hidden, sliced);
    }
    const last = i === end - 1;
    for (const v of g.output ?? []) {
      const name = v.name as string;
      if (name === IO.presentKey || name === IO.presentValue) {
        const fused = name === IO.presentKey ? FUSED_IO.presentKey(i) : FUSED_IO.presentValue(i);
        rename.set(name, fused);
        kvOutputs.push({ ...v, name: fused });
      } else if (last) {
        rename.set(name, name);
        outputs.push(v);
      } else {
        rename.set(name, prefix + name);
        hidden = prefix + name;
      }
    }
    const r = (x: string): string => (x === '' ? '' : (rename.get(x) ?? prefix + x));
    for (const node of g.node ?? []) {
      nodes.push({ ...node, name: prefix + (node.name ?? ''), input: (node.input ?? []).map(r), output: (node.output ?? []).map(r) });
    }
  }
  const model = onnx.ModelProto.create({
    irVersion,
    producerName: 'tandem-model',
    producerVersion: '1',
    opsetImport: opset,
    graph: { name: `fused.${begin}-${end}`, node: nodes, initializer: [...inits.values()], input: inputs, output: [...outputs, ...kvOutputs] },
  });
  return onnx.ModelProto.encode(model).finish();
}

/** The session config entry that makes a fused graph (built from bytes) find its weights under `dir`. */
export function fusedSessionConfig(dir: string): Record<string, string> {
  return { model_external_initializers_file_folder_path: path.resolve(dir) };
}
