/** Small helpers shared by the benchmarks in tools/bench (command-line flags, statistics, a model to run). */
import { createModel, readManifest } from '@tandem/model';

/** The value after `--name` on the command line, or `fallback`. */
export const arg = (name: string, fallback: string): string => { const i = process.argv.indexOf(`--${name}`); return i >= 0 ? process.argv[i + 1] : fallback; };

/** Median of a non-empty list. */
export const median = (xs: readonly number[]): number => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };

/** Creates the synthetic model of `preset` (seed 1) in `dir` unless a model is already there. */
export async function ensureModel(dir: string, preset: string): Promise<void> {
  try { await readManifest(dir); } catch {
    process.stderr.write(`creating the ${preset} model in ${dir}\n`);
    await createModel({ preset, seed: 1, out: dir });
  }
}
