import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { ModelConfig } from './config';
import { ImportError } from './errors';
import { type Manifest, stageCount, stageSlot } from './manifest';
import { type ProgressFn, writeModelDir } from './model-writer';
import { SafetensorsFile } from './safetensors';
import { allWeights } from './stage-graphs';

/** Options of {@link importHfModel}. */
export interface ImportHfOptions {
  /** A Hugging Face GPT-2 folder with `config.json` and `model.safetensors`. */
  readonly from: string;
  /** Output model directory; created if missing. A previous model in it is replaced. */
  readonly out: string;
  /** Called as weights are converted and written. */
  readonly onProgress?: ProgressFn;
}

const PREFIX = 'transformer.';
const FLOAT_DTYPES = new Set(['F32', 'F16', 'BF16']);
const shapeText = (s: readonly number[]): string => `[${s.join(',')}]`;

/**
 * Reads and checks a Hugging Face GPT-2 `config.json`.
 * @throws ImportError naming the field (`config.json n_embd`, ...), the rule and the value.
 */
export async function readHfConfig(dir: string): Promise<ModelConfig> {
  const file = path.join(dir, 'config.json');
  let raw: unknown;
  try {
    raw = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch (err) {
    throw new ImportError('config.json', 'exist in the checkpoint folder and be valid JSON', file, { cause: err });
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ImportError('config.json', 'be a JSON object', raw);
  const o = raw as Record<string, unknown>;
  const int = (k: string, max: number): number => {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > max) throw new ImportError(`config.json ${k}`, `be an integer in 1..${max}`, v);
    return v;
  };
  const cfg = {
    vocabSize: int('vocab_size', 1 << 24),
    nPositions: int('n_positions', 1 << 20),
    nEmbd: int('n_embd', 1 << 16),
    nLayer: int('n_layer', 1024),
    nHead: int('n_head', 1024),
    layerNormEpsilon: o.layer_norm_epsilon as number,
  };
  if (typeof cfg.layerNormEpsilon !== 'number' || !Number.isFinite(cfg.layerNormEpsilon) || cfg.layerNormEpsilon <= 0 || cfg.layerNormEpsilon >= 1) {
    throw new ImportError('config.json layer_norm_epsilon', 'be a number in (0, 1)', o.layer_norm_epsilon);
  }
  if (cfg.nEmbd % cfg.nHead !== 0) throw new ImportError('config.json n_head', `divide n_embd (${cfg.nEmbd})`, cfg.nHead);
  // The stage graphs implement GPT-2's MLP width and activation; refuse checkpoints that differ
  // rather than compute something else.
  if (o.n_inner !== undefined && o.n_inner !== null && o.n_inner !== 4 * cfg.nEmbd) {
    throw new ImportError('config.json n_inner', `be null or 4*n_embd (${4 * cfg.nEmbd})`, o.n_inner);
  }
  if (o.activation_function !== undefined && o.activation_function !== 'gelu_new' && o.activation_function !== 'gelu_pytorch_tanh') {
    throw new ImportError('config.json activation_function', "be 'gelu_new' (GELU, tanh approximation)", o.activation_function);
  }
  return Object.freeze(cfg);
}

/**
 * Converts a Hugging Face GPT-2 checkpoint into a model directory. Tensor names may carry the
 * `transformer.` prefix; F32/F16/BF16 are converted to float32; `attn.bias`, `attn.masked_bias`
 * and `lm_head.weight` (tied) are ignored whatever their dtype. Every tensor is checked before
 * anything is written.
 * @returns the manifest written.
 * @throws ImportError for a bad config field, or a tensor that is missing, mis-shaped, of an
 *   unsupported dtype or ambiguous (present with and without the prefix): the message names the
 *   tensor, the expected shape and the shape found.
 */
export async function importHfModel(opts: ImportHfOptions): Promise<Manifest> {
  const config = await readHfConfig(opts.from);
  const st = await SafetensorsFile.open(path.join(opts.from, 'model.safetensors')).catch((err: unknown) => {
    if (err instanceof ImportError) throw err;
    throw new ImportError('model.safetensors', 'exist in the checkpoint folder and be readable', path.join(opts.from, 'model.safetensors'), { cause: err });
  });
  try {
    const prefixed = [...st.entries.keys()].some((k) => k.startsWith(PREFIX));
    const slots = Array.from({ length: stageCount(config) }, (_, i) => stageSlot(i, config.nLayer));
    const fileName = new Map<string, string>();
    for (const w of allWeights(config, slots)) {
      const plain = st.entries.get(w.name);
      const pre = st.entries.get(PREFIX + w.name);
      const shown = prefixed ? PREFIX + w.name : w.name;
      if (plain && pre) {
        throw new ImportError(w.name, 'appear once', 'twice', { message: `tensor ${w.name} appears both with and without the '${PREFIX}' prefix; keep one` });
      }
      const e = plain ?? pre;
      if (!e) {
        throw new ImportError(shown, `be present with shape ${shapeText(w.dims)}`, 'missing', {
          message: `tensor ${shown} is missing: expected shape ${shapeText(w.dims)}, found none`,
        });
      }
      if (e.shape.length !== w.dims.length || e.shape.some((d, i) => d !== w.dims[i])) {
        throw new ImportError(e.name, `have shape ${shapeText(w.dims)}`, shapeText(e.shape), {
          message: `tensor ${e.name} has the wrong shape: expected shape ${shapeText(w.dims)}, found ${shapeText(e.shape)}`,
        });
      }
      if (!FLOAT_DTYPES.has(e.dtype)) {
        throw new ImportError(`${e.name} dtype`, 'be F32, F16 or BF16', e.dtype);
      }
      const bytes = w.dims.reduce((a, b) => a * b, 1) * (e.dtype === 'F32' ? 4 : 2);
      if (e.end - e.begin !== bytes)
        throw new ImportError(`${e.name} data_offsets`, `span ${bytes} bytes (shape ${shapeText(w.dims)}, ${e.dtype})`, `${e.end - e.begin} bytes`);
      fileName.set(w.name, e.name);
    }
    return await writeModelDir(opts.out, config, (spec) => st.readFloat32(fileName.get(spec.name) as string), { kind: 'huggingface' }, opts.onProgress);
  } finally {
    await st.close();
  }
}
