import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { createModel, readManifest, type Manifest } from '@tandem/model';
import { UsageError } from '../errors';

/** Seed of the demo's synthetic model. */
export const DEMO_SEED = 1;

/** Where the demo keeps the model of a preset when --model is not given. */
export function defaultModelDir(preset: string, cwd = process.cwd()): string {
  return path.join(cwd, '.tandem', 'models', `${preset}-${DEMO_SEED}`);
}

/** The manifest of `dir`, or undefined when `dir` holds no readable model. */
async function tryManifest(dir: string): Promise<Manifest | undefined> {
  try {
    return await readManifest(dir);
  } catch {
    return undefined;
  }
}

/** The model given with --model: it must already exist. @throws UsageError naming --model. */
export async function existingModel(dir: string): Promise<Manifest> {
  try {
    return await readManifest(dir);
  } catch (err) {
    throw new UsageError(`--model must name a model directory (manifest.json + stages/), given '${dir}' (${(err as Error).message})`);
  }
}

/**
 * The cached model of `preset` (seed 1) in `dir`, created when missing. Created in a sibling
 * temporary directory and renamed into place, so an interrupted run never leaves half a model.
 */
export async function cachedModel(preset: string, dir: string, progress: (done: number, total: number) => void): Promise<{ manifest: Manifest; created: boolean }> {
  const found = await tryManifest(dir);
  if (found) return { manifest: found, created: false };
  const parent = path.dirname(dir);
  mkdirSync(parent, { recursive: true });
  // The cache is local state, never something to commit.
  const cacheRoot = path.dirname(parent);
  if (path.basename(cacheRoot) === '.tandem' && !existsSync(path.join(cacheRoot, '.gitignore'))) writeFileSync(path.join(cacheRoot, '.gitignore'), '*\n');
  const tmp = `${dir}.partial-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  try {
    await createModel({ preset, seed: DEMO_SEED, out: tmp, onProgress: progress });
    rmSync(dir, { recursive: true, force: true });
    renameSync(tmp, dir);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return { manifest: await readManifest(dir), created: true };
}
