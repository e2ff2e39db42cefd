import { ModelFormatError, ModelOptionError } from './errors';

/** GPT-2 hyper-parameters, named as in the manifest's `config`. Invariant: `nEmbd % nHead === 0`. */
export interface ModelConfig {
  /** Number of token ids; the tied embedding `wte` is `[vocabSize, nEmbd]`. */
  readonly vocabSize: number;
  /** Maximum context length (learned position embedding rows). */
  readonly nPositions: number;
  /** Hidden width D. */
  readonly nEmbd: number;
  /** Number of transformer blocks. */
  readonly nLayer: number;
  /** Number of attention heads; head size is `nEmbd / nHead`. */
  readonly nHead: number;
  /** Epsilon of every LayerNorm. */
  readonly layerNormEpsilon: number;
}

/** Names of the built-in synthetic model shapes. */
export type PresetName = 'tiny' | 'small' | 'gpt2';

/** Built-in shapes for `createModel`: all use the GPT-2 vocabulary (50257) and 1024 positions. */
export const PRESETS: Readonly<Record<PresetName, ModelConfig>> = Object.freeze({
  tiny: Object.freeze({ vocabSize: 50257, nPositions: 1024, nEmbd: 64, nLayer: 2, nHead: 4, layerNormEpsilon: 1e-5 }),
  small: Object.freeze({ vocabSize: 50257, nPositions: 1024, nEmbd: 256, nLayer: 6, nHead: 8, layerNormEpsilon: 1e-5 }),
  gpt2: Object.freeze({ vocabSize: 50257, nPositions: 1024, nEmbd: 768, nLayer: 12, nHead: 12, layerNormEpsilon: 1e-5 }),
});

/** The preset called `name`. @throws ModelOptionError naming the preset when it is unknown. */
export function presetConfig(name: string): ModelConfig {
  if (!Object.prototype.hasOwnProperty.call(PRESETS, name)) {
    throw new ModelOptionError('preset', `be one of ${Object.keys(PRESETS).join(', ')}`, name);
  }
  return PRESETS[name as PresetName];
}

// Upper bounds keep every derived size (e.g. vocabSize*nEmbd*4 bytes) a safe integer and far from
// what this CPU runtime could hold; they only reject nonsense.
const LIMITS = { vocabSize: 1 << 24, nPositions: 1 << 20, nEmbd: 1 << 16, nLayer: 1024, nHead: 1024 } as const;

/**
 * Checks a config object field by field and returns a clean copy.
 * @param where prefix for field names in errors, e.g. `config`.
 * @throws ModelFormatError naming the first bad field, the rule and the value.
 */
export function validateConfig(raw: unknown, where = 'config'): ModelConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ModelFormatError(where, 'be an object', raw);
  const o = raw as Record<string, unknown>;
  const int = (k: keyof typeof LIMITS): number => {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > LIMITS[k]) {
      throw new ModelFormatError(`${where}.${k}`, `be an integer in 1..${LIMITS[k]}`, v);
    }
    return v;
  };
  const cfg = {
    vocabSize: int('vocabSize'),
    nPositions: int('nPositions'),
    nEmbd: int('nEmbd'),
    nLayer: int('nLayer'),
    nHead: int('nHead'),
    layerNormEpsilon: o.layerNormEpsilon as number,
  };
  if (typeof cfg.layerNormEpsilon !== 'number' || !Number.isFinite(cfg.layerNormEpsilon) || cfg.layerNormEpsilon <= 0 || cfg.layerNormEpsilon >= 1) {
    throw new ModelFormatError(`${where}.layerNormEpsilon`, 'be a number in (0, 1)', o.layerNormEpsilon);
  }
  if (cfg.nEmbd % cfg.nHead !== 0) {
    throw new ModelFormatError(`${where}.nHead`, `divide ${where}.nEmbd (${cfg.nEmbd})`, cfg.nHead);
  }
  return Object.freeze(cfg);
}
