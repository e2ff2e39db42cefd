import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { ModelConfig } from './config';
import { ModelOptionError } from './errors';
import { type Manifest, MODEL_FORMAT, type ModelSource, type StageInfo, describeStage, stageCount, stageSlot } from './manifest';
import type { ExternalRef } from './onnx-graph';
import { WTE, type WeightSpec, allWeights, buildStageGraph, stageWeights } from './stage-graphs';

/** Supplies the float32 values of each weight; called exactly once per weight, in a fixed order. */
export type WeightSource = (spec: WeightSpec) => Float32Array | Promise<Float32Array>;

/** Progress callback: bytes of weights written so far, total bytes, and what is being written. */
export type ProgressFn = (done: number, total: number, what: string) => void;

/** File name of the tied embedding, shared by `embed.onnx` and `head.onnx`. */
export const WTE_FILE = 'wte.bin';

// Big tensors start on a page boundary so the runtime may map them; small ones on 64 bytes.
function align(offset: number, length: number): number {
  const a = length >= 65536 ? 4096 : 64;
  return Math.ceil(offset / a) * a;
}

/**
 * Makes `dir` ready to receive a model: creates it, or clears the model files of a previous model in
 * it (manifest.json and stages/). Refuses a non-empty directory that is not a model directory.
 */
async function prepareDir(dir: string): Promise<void> {
  let entries: string[] = [];
  try {
    entries = await fsp.readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTDIR') throw new ModelOptionError('out', 'be a directory', dir, { cause: err });
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (entries.length > 0) {
    if (!entries.includes('manifest.json')) {
      throw new ModelOptionError('out', 'be a new or empty directory, or an existing model directory', dir);
    }
    // Manifest first: a half-replaced directory must never look like a valid model.
    await fsp.rm(path.join(dir, 'manifest.json'), { force: true });
    await fsp.rm(path.join(dir, 'stages'), { recursive: true, force: true });
  }
  await fsp.mkdir(path.join(dir, 'stages'), { recursive: true });
}

/**
 * Writes a model directory: `stages/<stage>.onnx` with weights as external data in
 * `stages/<stage>.bin` (the tied embedding once, in `stages/wte.bin`), then `manifest.json`
 * last. Holds one weight tensor in memory at a time. Output bytes depend only on `config`,
 * the weights and `sourceInfo` (no paths, no timestamps).
 * @throws ModelOptionError when `dir` is a non-empty directory that is not a model directory.
 */
export async function writeModelDir(
  dir: string,
  config: ModelConfig,
  weights: WeightSource,
  sourceInfo: ModelSource,
  onProgress?: ProgressFn,
): Promise<Manifest> {
  await prepareDir(dir);
  const n = stageCount(config);
  const slots = Array.from({ length: n }, (_, i) => stageSlot(i, config.nLayer));
  const total = allWeights(config, slots).reduce((s, w) => s + 4 * w.dims.reduce((a, b) => a * b, 1), 0);
  let done = 0;
  onProgress?.(0, total, WTE);

  const writeTensors = async (file: string, specs: readonly WeightSpec[], refs: Map<string, ExternalRef>): Promise<void> => {
    const fh = await fsp.open(path.join(dir, 'stages', file), 'w');
    try {
      let offset = 0;
      for (const spec of specs) {
        const count = spec.dims.reduce((a, b) => a * b, 1);
        const data = await weights(spec);
        if (data.length !== count) throw new Error(`internal: weight ${spec.name} has ${data.length} values, expected ${count}`);
        offset = align(offset, data.byteLength);
        await fh.write(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), 0, data.byteLength, offset);
        refs.set(spec.name, { location: file, offset, length: data.byteLength });
        offset += data.byteLength;
        done += data.byteLength;
        onProgress?.(done, total, spec.name);
      }
    } finally {
      await fh.close();
    }
  };

  const wteRefs = new Map<string, ExternalRef>();
  await writeTensors(WTE_FILE, [{ name: WTE, dims: [config.vocabSize, config.nEmbd] }], wteRefs);

  const stages: StageInfo[] = [];
  for (const slot of slots) {
    const own = stageWeights(slot, config).filter((w) => w.name !== WTE);
    const dataFile = `${slot.name}.bin`;
    const refs = new Map<string, ExternalRef>(wteRefs);
    await writeTensors(dataFile, own, refs);
    const usesWte = slot.kind === 'embed' || slot.kind === 'head';
    const info = describeStage(slot.index, config, [...(usesWte ? [`stages/${WTE_FILE}`] : []), `stages/${dataFile}`]);
    await fsp.writeFile(path.join(dir, info.file), buildStageGraph(slot, config, refs));
    stages.push(info);
  }
  const manifest: Manifest = { format: MODEL_FORMAT, family: 'gpt2', config: { ...config }, stages, source: sourceInfo };
  await fsp.writeFile(path.join(dir, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  onProgress?.(total, total, 'manifest.json');
  return manifest;
}
