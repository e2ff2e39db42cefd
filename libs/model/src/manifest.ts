import { createHash } from 'node:crypto';
import { promises as fsp, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { type ModelConfig, validateConfig } from './config';
import { ModelFormatError } from './errors';

/** The manifest `format` this library reads and writes. */
export const MODEL_FORMAT = 'tandem-model/1';

/** What a stage computes: token+position embedding, one block's attention or MLP half, or the LM head. */
export type StageKind = 'embed' | 'attn' | 'mlp' | 'head';

/** Position of a stage in the model: its name, kind and (for attn/mlp) block index. */
export interface StageSlot {
  readonly index: number;
  /** `embed`, `block.{i}.attn`, `block.{i}.mlp` or `head`. */
  readonly name: string;
  readonly kind: StageKind;
  /** Block index for `attn`/`mlp` stages, absent otherwise. */
  readonly layer?: number;
}

/**
 * One stage entry of manifest.json. `name`, `file` and `inBytesPerToken` are the contract; the
 * other fields are extensions written by this library (readers must not require them).
 */
export interface StageInfo extends StageSlot {
  /** The stage's ONNX file, relative to the model directory, e.g. `stages/block.0.attn.onnx`. */
  readonly file: string;
  /** Bytes of the tensor entering the stage per token: 8 for `embed` (int64 id), `4*nEmbd` otherwise. */
  readonly inBytesPerToken: number;
  /** Bytes of the tensor leaving the stage per token: `4*nEmbd`, or `4*vocabSize` for `head` (logits). */
  readonly outBytesPerToken?: number;
  /** Bytes of float32 weights the stage loads (the tied `wte` is counted by both `embed` and `head`). */
  readonly paramBytes?: number;
  /** Matrix-multiply FLOPs per token (2 per multiply-add), excluding the context-dependent attention part. */
  readonly flopsPerToken?: number;
  /** attn only: extra FLOPs per token per token of context (QKᵀ and the weighted sum of V: `4*nEmbd`). */
  readonly flopsPerTokenPerContext?: number;
  /** External weight files the ONNX file refers to, relative to the model directory. */
  readonly dataFiles?: readonly string[];
}

/** Where the weights came from (informational). */
export type ModelSource = { readonly kind: 'synthetic'; readonly preset: string; readonly seed: number } | { readonly kind: 'huggingface' };

/** Parsed and validated manifest.json. Invariant: `stages.length === 2*config.nLayer + 2`, in contract order. */
export interface Manifest {
  readonly format: typeof MODEL_FORMAT;
  readonly family: 'gpt2';
  readonly config: ModelConfig;
  readonly stages: readonly StageInfo[];
  readonly source?: ModelSource;
}

/**
 * KV-cache bytes a stage of `kind` keeps per token of context: key and value, float32
 * `nEmbd` each, for an attention stage; 0 for the others (they keep no per-token state).
 */
export function stageKvBytesPerToken(kind: StageKind, nEmbd: number): number {
  return kind === 'attn' ? 2 * 4 * nEmbd : 0;
}

/** Number of stages of a model: `2*nLayer + 2`. */
export function stageCount(config: Pick<ModelConfig, 'nLayer'>): number {
  return 2 * config.nLayer + 2;
}

/** The stage at `index` for a model with `nLayer` blocks (contract order: embed, attn/mlp per block, head). */
export function stageSlot(index: number, nLayer: number): StageSlot {
  if (index === 0) return { index, name: 'embed', kind: 'embed' };
  if (index === 2 * nLayer + 1) return { index, name: 'head', kind: 'head' };
  const layer = Math.floor((index - 1) / 2);
  const kind = (index - 1) % 2 === 0 ? 'attn' : 'mlp';
  return { index, name: `block.${layer}.${kind}`, kind, layer };
}

/** The manifest entry this library writes for stage `index` (sizes and costs derived from `config`). */
export function describeStage(index: number, config: ModelConfig, dataFiles: readonly string[]): StageInfo {
  const slot = stageSlot(index, config.nLayer);
  const { vocabSize: V, nPositions: P, nEmbd: D } = config;
  const f32 = 4;
  let paramBytes: number;
  let flopsPerToken: number;
  let outBytesPerToken = f32 * D;
  switch (slot.kind) {
    case 'embed':
      paramBytes = f32 * (V + P) * D;
      flopsPerToken = 0;
      break;
    case 'attn':
      paramBytes = f32 * (2 * D + D * 3 * D + 3 * D + D * D + D);
      flopsPerToken = 2 * 4 * D * D;
      break;
    case 'mlp':
      paramBytes = f32 * (2 * D + D * 4 * D + 4 * D + 4 * D * D + D);
      flopsPerToken = 2 * 8 * D * D;
      break;
    case 'head':
      paramBytes = f32 * (V * D + 2 * D);
      flopsPerToken = 2 * V * D;
      outBytesPerToken = f32 * V;
      break;
  }
  return {
    ...slot,
    file: `stages/${slot.name}.onnx`,
    inBytesPerToken: slot.kind === 'embed' ? 8 : f32 * D,
    outBytesPerToken,
    paramBytes,
    flopsPerToken,
    ...(slot.kind === 'attn' ? { flopsPerTokenPerContext: 4 * D } : {}),
    dataFiles,
  };
}

/** A relative path inside the model directory: no absolute path, no `..`, forward slashes. */
function checkRelative(field: string, v: unknown): string {
  if (typeof v !== 'string' || v === '' || v.includes('\\') || path.posix.isAbsolute(v) || path.posix.normalize(v) !== v || v.startsWith('..')) {
    throw new ModelFormatError(field, 'be a relative path inside the model directory', v);
  }
  return v;
}

/**
 * Validates a parsed manifest.json value (without touching the file system).
 * @throws ModelFormatError naming the first bad field (e.g. `stages[3].inBytesPerToken`), the rule and the value.
 */
export function validateManifest(raw: unknown): Manifest {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ModelFormatError('manifest', 'be a JSON object', raw);
  const o = raw as Record<string, unknown>;
  if (o.format !== MODEL_FORMAT) throw new ModelFormatError('format', `be '${MODEL_FORMAT}'`, o.format);
  if (o.family !== 'gpt2') throw new ModelFormatError('family', "be 'gpt2'", o.family);
  const config = validateConfig(o.config, 'config');
  const n = stageCount(config);
  if (!Array.isArray(o.stages) || o.stages.length !== n) {
    throw new ModelFormatError('stages', `be an array of 2*nLayer+2 = ${n} entries`, Array.isArray(o.stages) ? `${o.stages.length} entries` : o.stages);
  }
  const stages = o.stages.map((s: unknown, i: number): StageInfo => {
    const at = `stages[${i}]`;
    if (typeof s !== 'object' || s === null || Array.isArray(s)) throw new ModelFormatError(at, 'be an object', s);
    const e = s as Record<string, unknown>;
    const slot = stageSlot(i, config.nLayer);
    if (e.name !== slot.name) throw new ModelFormatError(`${at}.name`, `be '${slot.name}'`, e.name);
    const file = checkRelative(`${at}.file`, e.file);
    if (!file.endsWith('.onnx')) throw new ModelFormatError(`${at}.file`, 'name an .onnx file', file);
    const inBytes = slot.kind === 'embed' ? 8 : 4 * config.nEmbd;
    if (e.inBytesPerToken !== inBytes) throw new ModelFormatError(`${at}.inBytesPerToken`, `be ${inBytes}`, e.inBytesPerToken);
    let dataFiles: string[] | undefined;
    if (e.dataFiles !== undefined) {
      if (!Array.isArray(e.dataFiles)) throw new ModelFormatError(`${at}.dataFiles`, 'be an array of relative paths', e.dataFiles);
      dataFiles = e.dataFiles.map((d, j) => checkRelative(`${at}.dataFiles[${j}]`, d));
    }
    const num = (k: string): number | undefined => (typeof e[k] === 'number' ? (e[k] as number) : undefined);
    return {
      ...slot,
      file,
      inBytesPerToken: inBytes,
      outBytesPerToken: num('outBytesPerToken'),
      paramBytes: num('paramBytes'),
      flopsPerToken: num('flopsPerToken'),
      flopsPerTokenPerContext: num('flopsPerTokenPerContext'),
      dataFiles,
    };
  });
  const source = typeof o.source === 'object' && o.source !== null ? (o.source as ModelSource) : undefined;
  return Object.freeze({ format: MODEL_FORMAT, family: 'gpt2', config, stages: Object.freeze(stages), ...(source ? { source } : {}) });
}

/**
 * Reads and validates `DIR/manifest.json` and checks that every stage file and data file exists.
 * @throws ModelFormatError (field `manifest.json` when the file is missing or not JSON; otherwise the bad field).
 */
export async function readManifest(dir: string): Promise<Manifest> {
  const file = path.join(dir, 'manifest.json');
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    throw new ModelFormatError('manifest.json', 'exist in the model directory', dir, { cause: err });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ModelFormatError('manifest.json', 'be valid JSON', (err as Error).message, { cause: err });
  }
  const manifest = validateManifest(raw);
  for (const [i, s] of manifest.stages.entries()) {
    for (const [field, rel] of [[`stages[${i}].file`, s.file], ...(s.dataFiles ?? []).map((d, j) => [`stages[${i}].dataFiles[${j}]`, d])]) {
      try {
        await fsp.access(path.join(dir, rel));
      } catch (err) {
        throw new ModelFormatError(field, 'name an existing file', rel, { cause: err });
      }
    }
  }
  return manifest;
}

/**
 * A model's id: the first 16 hex digits of the SHA-256 of its manifest.json bytes. Client and
 * server compute it the same way, so a session can refuse a peer holding another model.
 * @throws ModelFormatError when manifest.json cannot be read.
 */
export function modelIdOf(dir: string): string {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path.join(dir, 'manifest.json'));
  } catch (err) {
    throw new ModelFormatError('manifest.json', 'exist in the model directory', dir, { cause: err });
  }
  return createHash('sha256').update(bytes).digest('hex').slice(0, 16);
}
