import type { StageRunner } from '@tandem/model';
import type { HostTensor } from '@tandem/protocol';
import { suiteModel } from '@tandem/testkit';
import { OnnxStageEngine, WARMUP_DECODE_STEPS, WARMUP_PROMPT_TOKENS } from '../src';

/** The engine's StageRunner, with every run and runRange call's input shape recorded. */
function watched(engine: OnnxStageEngine): { run: number[][]; range: number[][] } {
  const runner = (engine as unknown as { runner: StageRunner }).runner;
  const calls = { run: [] as number[][], range: [] as number[][] };
  const run = runner.run.bind(runner);
  const runRange = runner.runRange.bind(runner);
  jest.spyOn(runner, 'run').mockImplementation((stage, input: HostTensor, cache) => {
    if (stage === 0) calls.run.push([...input.shape]);
    return run(stage, input, cache);
  });
  jest.spyOn(runner, 'runRange').mockImplementation((begin, end, input: HostTensor, cache, opts) => {
    calls.range.push([...input.shape]);
    return runRange(begin, end, input, cache, opts);
  });
  return calls;
}

describe('the engine warm-up', () => {
  const model = suiteModel();

  it('runs a prompt and a run of decode steps each way the engine runs steps: stage by stage, and fused when loaded', async () => {
    const steps = [[1, WARMUP_PROMPT_TOKENS], ...Array.from({ length: WARMUP_DECODE_STEPS }, () => [1, 1])];
    const fused = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1, fuseAllStages: true });
    try {
      expect(fused.nPositions).toBeGreaterThan(WARMUP_PROMPT_TOKENS + WARMUP_DECODE_STEPS);
      const calls = watched(fused);
      await fused.warmup();
      expect(calls.run).toEqual(steps);
      expect(calls.range).toEqual(steps);
    } finally {
      await fused.close();
    }
    const staged = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    try {
      const calls = watched(staged);
      await staged.warmup();
      expect(calls.run).toEqual(steps);
      expect(calls.range).toEqual([]);
    } finally {
      await staged.close();
    }
  });
});
