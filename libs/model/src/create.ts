import { presetConfig } from './config';
import { ModelOptionError } from './errors';
import type { Manifest } from './manifest';
import { type ProgressFn, type WeightSource, writeModelDir } from './model-writer';
import { Xoshiro128, hashSeed } from './prng';
import type { WeightSpec } from './stage-graphs';

/** Options of {@link createModel}. */
export interface CreateModelOptions {
  /** A preset name: `tiny`, `small` or `gpt2` (see `PRESETS`). */
  readonly preset: string;
  /** Seed of the weights: an integer in 0..2^32-1. Same preset and seed give byte-identical files. */
  readonly seed: number;
  /** Output directory; created if missing. A previous model in it is replaced. */
  readonly out: string;
  /** Called as weights are written (bytes done, bytes total, current tensor). */
  readonly onProgress?: ProgressFn;
}

/**
 * GPT-2-like initialisation, each tensor from its own generator seeded by (seed, tensor name), so a
 * tensor's values do not depend on the order tensors are generated in:
 * linear weights N(0, 0.02) (residual projections `c_proj` scaled by 1/√(2·nLayer) as in GPT-2),
 * `wpe` N(0, 0.01), linear biases N(0, 0.002), LayerNorm weights 1 + N(0, 0.02) and biases N(0, 0.002).
 * Biases and LayerNorm parameters are slightly perturbed (GPT-2 starts them at 0 and 1) so tests
 * exercise them; larger biases would add a constant to the residual stream that drowns the tokens.
 */
function syntheticWeights(seed: number, nLayer: number): WeightSource {
  return (spec: WeightSpec): Float32Array => {
    const out = new Float32Array(spec.dims.reduce((a, b) => a * b, 1));
    const rng = new Xoshiro128(hashSeed(`${seed}:${spec.name}`));
    const isLn = /(^|\.)ln_(1|2|f)\./.test(spec.name);
    const isBias = spec.name.endsWith('.bias');
    if (isLn) rng.fillNormal(out, isBias ? 0 : 1, isBias ? 0.002 : 0.02);
    else if (isBias) rng.fillNormal(out, 0, 0.002);
    else if (spec.name === 'wpe.weight') rng.fillNormal(out, 0, 0.01);
    else if (spec.name.endsWith('c_proj.weight')) rng.fillNormal(out, 0, 0.02 / Math.sqrt(2 * nLayer));
    else rng.fillNormal(out, 0, 0.02);
    return out;
  };
}

/**
 * Writes a synthetic GPT-2-family model with deterministic weights to `opts.out`.
 * @returns the manifest written.
 * @throws ModelOptionError for an unknown preset, a seed outside 0..2^32-1, or an `out` that is a
 *   non-empty directory other than a model directory.
 */
export async function createModel(opts: CreateModelOptions): Promise<Manifest> {
  const config = presetConfig(opts.preset);
  if (!Number.isInteger(opts.seed) || opts.seed < 0 || opts.seed > 0xffffffff) {
    throw new ModelOptionError('seed', 'be an integer in 0..4294967295', opts.seed);
  }
  return writeModelDir(
    opts.out,
    config,
    syntheticWeights(opts.seed, config.nLayer),
    { kind: 'synthetic', preset: opts.preset, seed: opts.seed },
    opts.onProgress,
  );
}
