import { suiteModel } from '@tandem/testkit';
import { LocalStages } from '../src/local-stages';

describe('LocalStages device emulation', () => {
  const model = suiteModel();

  it('pads each stage to slowdown x its uncontended start-up cost, and publishes that cost', async () => {
    const local = await LocalStages.load(model.dir, [0, 1, 2, 3, 4, 5], { slowdown: 4, intraOpNumThreads: 1 });
    try {
      await local.profile({ promptTokens: 8, decodeSteps: 3, rounds: 2, nEmbd: 64 });
      const costs = local.costs();
      expect(costs).toHaveLength(6);
      for (const c of costs) {
        expect(c.decodeMs).toBeGreaterThan(0);
        expect(c.prefillMsPerToken).toBeGreaterThan(0);
      }
      // a decode step at an MLP stage: its emulated time is 4 x the profiled decode cost (or the real time if longer)
      const cache = local.newCache();
      const hidden = { dtype: 'float32' as const, shape: [1, 1, 64], data: new Float32Array(64).fill(0.1) };
      const before = costs[2].decodeMs;
      const t0 = performance.now();
      let total = 0;
      for (let i = 0; i < 20; i++) total += (await local.run(2, hidden, cache)).ms;
      const wall = performance.now() - t0;
      expect(total / 20).toBeGreaterThanOrEqual(before * 0.999);
      // the padding is really slept (owed padding under 4 ms may remain)
      expect(wall).toBeGreaterThanOrEqual(total - 4.5);
      cache.clear();
    } finally {
      await local.close();
    }
  });
});
