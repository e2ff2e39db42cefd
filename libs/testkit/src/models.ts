import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createModel } from '@tandem/model';

/** A generated model in a fresh temporary directory; `remove()` deletes it. */
export interface TempModel {
  readonly dir: string;
  remove(): void;
}

/** Creates a synthetic model (default: the tiny preset, seed 1) in a new temporary directory. */
export async function makeTempModel(opts: { preset?: string; seed?: number } = {}): Promise<TempModel> {
  const root = mkdtempSync(join(tmpdir(), 'tandem-model-'));
  const dir = join(root, 'model');
  await createModel({ preset: opts.preset ?? 'tiny', seed: opts.seed ?? 1, out: dir });
  return { dir, remove: () => rmSync(root, { recursive: true, force: true }) };
}

/**
 * The model of one describe block: makeTempModel(`opts`) before its tests (within `timeoutMs`),
 * removed after them. Call it where the block declares its state; read `dir` in the tests.
 */
export function suiteModel(opts: { preset?: string; seed?: number } = {}, timeoutMs?: number): TempModel {
  let model: TempModel | undefined;
  beforeAll(async () => {
    model = await makeTempModel(opts);
  }, timeoutMs);
  afterAll(() => model?.remove());
  return {
    get dir(): string {
      if (!model) throw new Error('internal: the suite model is made in beforeAll; read its dir in a test');
      return model.dir;
    },
    remove: () => model?.remove(),
  };
}
