import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import * as path from 'node:path';
import { createModel, readManifest, type Manifest } from '@tandem/model';

/** Seed of every cached synthetic model. */
export const CACHE_SEED = 1;

/** Where presets are cached: $TANDEM_CACHE_DIR, else $XDG_CACHE_HOME/tandem or ~/.cache/tandem; then models/<preset>-seed1. */
export function presetModelDir(preset: string, env: NodeJS.ProcessEnv = process.env): string {
  const root = env.TANDEM_CACHE_DIR || path.join(env.XDG_CACHE_HOME || path.join(homedir(), '.cache'), 'tandem');
  return path.join(root, 'models', `${preset}-seed${CACHE_SEED}`);
}

/**
 * The synthetic model of `preset` (seed 1) in `dir`, created when `dir` holds no model: in a
 * sibling temporary directory renamed into place, so an interrupted run never leaves half a
 * model. Any model already there is used, unless it is another synthetic preset.
 * @throws Error when `dir` holds another preset, or files that are not a model.
 */
export async function ensurePresetModel(
  preset: string,
  dir: string,
  onProgress?: (done: number, total: number) => void,
): Promise<{ manifest: Manifest; created: boolean }> {
  const found = await readManifest(dir).catch(() => undefined);
  if (found) {
    if (found.source?.kind === 'synthetic' && found.source.preset !== preset)
      throw new Error(`${dir} holds another model (${JSON.stringify(found.source)}), not the ${preset} preset`);
    return { manifest: found, created: false };
  }
  // What an interrupted in-place write leaves (stages/ without a manifest) may be replaced; anything else is not ours.
  const other = existsSync(dir) ? readdirSync(dir).filter((e) => e !== 'stages' && e !== 'manifest.json') : [];
  if (other.length) throw new Error(`${dir} holds files that are not a model (${other.slice(0, 3).join(', ')}); give another directory`);
  const parent = path.dirname(dir);
  mkdirSync(parent, { recursive: true });
  // A cache in the working tree (.tandem/) is local state, never something to commit.
  const cacheRoot = path.dirname(parent);
  if (path.basename(cacheRoot) === '.tandem' && !existsSync(path.join(cacheRoot, '.gitignore'))) writeFileSync(path.join(cacheRoot, '.gitignore'), '*\n');
  const tmp = `${dir}.partial-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  try {
    await createModel({ preset, seed: CACHE_SEED, out: tmp, onProgress });
    rmSync(dir, { recursive: true, force: true });
    renameSync(tmp, dir);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return { manifest: await readManifest(dir), created: true };
}
