import { createHash } from 'node:crypto';
import type { HostTensor } from '@tandem/protocol';
import { suiteModel } from '@tandem/testkit';
import { IDLE_COLLECT_DELAY_MS, WorkerStageEngine } from '../src';

// EXECUTOR_RETURN_MEMORY (onnxruntime without its memory arena, a collection after bursts) changes
// where memory lives, never what is computed: the same steps give the same bits, and the engine
// keeps working after the collection that follows the last release. (The memory it gives back is
// measured by `npm run bench:memory`.)
const tokens = (v: number[]): HostTensor => ({ dtype: 'int64', shape: [1, v.length], data: BigInt64Array.from(v, BigInt) });

/** Each step's logits as a digest (jest compares short strings fast, 200 KB buffers slowly). */
async function run(engine: WorkerStageEngine, sessions: number): Promise<string[]> {
  const out: string[] = [];
  const caches = Array.from({ length: sessions }, () => engine.newCache());
  for (const [i, cache] of caches.entries()) {
    for (const x of [tokens([5 + i, 17, 300, 2]), tokens([42])]) {
      const y = await engine.runRange(0, engine.stageCount, x, cache, true);
      out.push(
        createHash('sha256')
          .update(new Uint8Array(y.data.buffer, y.data.byteOffset, y.data.byteLength))
          .digest('hex'),
      );
    }
  }
  for (const c of caches) engine.releaseCache(c);
  return out;
}

describe('WorkerStageEngine with returnMemory', () => {
  const model = suiteModel();

  it('computes the same bits as with the arena, and keeps working after the idle collection', async () => {
    const plain = await WorkerStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    const lean = await WorkerStageEngine.load(model.dir, { intraOpNumThreads: 1, returnMemory: true });
    try {
      const a = await run(plain, 10);
      const b = await run(lean, 10);
      expect(b).toEqual(a);
      const pauses: string[] = [];
      lean.onGcPause((kind) => pauses.push(kind));
      await new Promise((r) => setTimeout(r, IDLE_COLLECT_DELAY_MS * 3)); // both threads collect now
      expect(await run(lean, 2)).toEqual(a.slice(0, 4));
      // The inference thread's collection reached the event loop as a pause of its own heap.
      expect(pauses).toContain('major');
    } finally {
      await plain.close();
      await lean.close();
    }
  });
});
