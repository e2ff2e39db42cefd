import type { Placement } from '@tandem/dp';
import { type Manifest, SplitPipeline, isModelInputError, parsePlacement, readManifest } from '@tandem/model';
import { UsageError } from './errors';

// Flags of the commands that read a model directory, shared by forward, generate, model and demo.

// Library field names that correspond to a CLI flag, so messages name what the user typed.
const FLAG_OF: Readonly<Record<string, string>> = {
  placement: '--placement',
  preset: '--preset',
  seed: '--seed',
  out: '--out',
  maxNewTokens: '--max-new-tokens',
  prompt: '--prompt',
};

/**
 * Turns the model library's bad-input errors into a UsageError (exit 2) whose line names the flag,
 * the rule and the value; `source` names the flag of the directory read (e.g. `--model DIR`) for
 * errors about that directory's contents. Anything else is returned unchanged (exit 1).
 */
export function toUsageError(err: unknown, source?: string): unknown {
  if (!isModelInputError(err)) return err;
  const flag = FLAG_OF[err.field];
  if (flag && err.name === 'ModelOptionError') return new UsageError(`${flag} must ${err.rule}, given ${err.given}`, { cause: err });
  return new UsageError(source ? `${source}: ${err.message}` : err.message, { cause: err });
}

/** Reads the manifest of `--model`, mapping a bad directory to exit 2. */
export async function readModelFlag(dir: string): Promise<Manifest> {
  try {
    return await readManifest(dir);
  } catch (err) {
    throw toUsageError(err, `--model ${dir}`);
  }
}

/** Parses `--placement` against the model's stage count. @throws UsageError */
export function placementFlag(value: string, manifest: Manifest): Placement {
  try {
    return parsePlacement(value, manifest.stages.length);
  } catch (err) {
    throw toUsageError(err);
  }
}

/**
 * Parses a comma-separated list of token ids (`15496,11,995`) and checks each against the model's
 * vocabulary. @throws UsageError naming `flag`, the rule and the value.
 */
export function idsFlag(flag: string, value: string, manifest: Manifest): number[] {
  const V = manifest.config.vocabSize;
  const parts = value.split(',').map((s) => s.trim());
  if (value.trim() === '' || parts.some((p) => !/^\d+$/.test(p))) {
    throw new UsageError(`${flag} must be a comma-separated list of token ids (non-negative integers), given '${value}'`);
  }
  const ids = parts.map(Number);
  const bad = ids.findIndex((id) => !Number.isSafeInteger(id) || id >= V);
  if (bad >= 0)
    throw new UsageError(`${flag} must hold token ids in 0..${V - 1} (the model's vocabulary), given ${parts[bad]} at position ${bad} in '${value}'`);
  if (ids.length > manifest.config.nPositions) {
    throw new UsageError(`${flag} must hold at most nPositions = ${manifest.config.nPositions} ids, given ${ids.length}`);
  }
  return ids;
}

/** Loads the split pipeline for a CLI command, mapping bad input to exit 2. */
export async function loadPipeline(dir: string, placement: Placement): Promise<SplitPipeline> {
  try {
    return await SplitPipeline.load(dir, placement);
  } catch (err) {
    throw toUsageError(err, `--model ${dir}`);
  }
}

/** The model given with `tandem demo --model`: it must already exist. @throws UsageError naming --model. */
export async function existingModelFlag(dir: string): Promise<Manifest> {
  try {
    return await readManifest(dir);
  } catch (err) {
    throw new UsageError(`--model must name a model directory (manifest.json + stages/), given '${dir}' (${(err as Error).message})`);
  }
}
