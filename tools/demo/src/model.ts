import * as path from 'node:path';
import { CACHE_SEED } from '@tandem/launcher';

/** Seed of the demo's synthetic model. */
export const DEMO_SEED = CACHE_SEED;

/** Where the demo keeps the model of a preset when --model is not given (made by @tandem/launcher's ensurePresetModel). */
export function demoModelDir(preset: string, cwd = process.cwd()): string {
  return path.join(cwd, '.tandem', 'models', `${preset}-${DEMO_SEED}`);
}
