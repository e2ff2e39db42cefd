import { SplitPipeline } from '@tandem/model';
import { suiteModel } from '@tandem/testkit';
import { generate } from '../src/generation';
import { LinkEmulator, LinkEstimator } from '../src/link';
import { LocalStages } from '../src/local-stages';

describe('generation on the device', () => {
  const model = suiteModel();

  it('runs its own head on the last position only and still gives the one-process tokens', async () => {
    const local = await LocalStages.load(model.dir, [0, 1, 2, 3, 4, 5], { slowdown: 1, intraOpNumThreads: 1 });
    const pipe = await SplitPipeline.load(model.dir, 'CCCCCC');
    try {
      const prompt = [464, 2068, 7586, 21831, 18045];
      const expected = await pipe.generate(prompt, { maxNewTokens: 4 });
      const run = jest.spyOn(local, 'run');
      const tokens: number[] = [];
      const stats = await generate(
        {
          local,
          openRemote: () => Promise.reject(new Error('an all-client placement must not open a server session')),
          emulator: new LinkEmulator({ latencyMs: 0, bytesPerMs: 0 }, { latencyMs: 0, bytesPerMs: 0 }),
          estimator: new LinkEstimator(),
          vocabSize: 50257,
          signal: new AbortController().signal,
        },
        'CCCCCC',
        prompt,
        4,
        (id) => tokens.push(id),
      );
      expect(stats.ids).toEqual(expected);
      expect(tokens).toEqual(expected);
      const headInputs = run.mock.calls.filter(([stage]) => stage === 5).map(([, x]) => x.shape);
      // the prefill's head got [1, 1, 64], not [1, 5, 64]; every stage before it saw the whole prompt
      expect(headInputs).toEqual([
        [1, 1, 64],
        [1, 1, 64],
        [1, 1, 64],
        [1, 1, 64],
      ]);
      expect(run.mock.calls.find(([stage]) => stage === 4)?.[1].shape).toEqual([1, 5, 64]);
    } finally {
      await pipe.close();
      await local.close();
    }
  });
});
