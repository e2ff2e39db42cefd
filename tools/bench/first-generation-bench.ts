/**
 * The first generation after an executor starts against the next one: a fresh executor (worker
 * engine, fused whole range, one thread, on 127.0.0.1) per repetition, then two all-server
 * generations one after the other on the per-step path (a `--prompt`-token prompt, then
 * `--decode` sampled steps), each with its own prompt. What the engine's warm-up
 * (OnnxStageEngine.warmup) is for: the first generation's steps are the figures the executor
 * publishes first, which the planner plans with. Prints the executor's start time (warm-up and
 * start-up profile included), each generation's prefill and median decode step, and the ratio
 * first / second, median [min-max] over `--reps` fresh executors.
 *
 *   npx tsx tools/bench/first-generation-bench.ts [--preset small] [--prompt 200] [--decode 16] [--reps 3]
 */
import { WorkerStageEngine } from '@tandem/server-executor';
import { arg, benchModel, formatSpread, median, seededPrompt, spread, startBenchExecutor, timedSession } from './bench-kit';

const preset = arg('preset', 'small');
const promptLen = Number(arg('prompt', '200'));
const decode = Number(arg('decode', '16'));
const reps = Number(arg('reps', '3'));
for (const [name, v] of [
  ['prompt', promptLen],
  ['decode', decode],
  ['reps', reps],
] as const) {
  if (!Number.isInteger(v) || v < 1) throw new RangeError(`--${name} must be an integer >= 1, given ${String(v)}`);
}

async function main(): Promise<void> {
  const dir = await benchModel(preset);
  const start: number[] = [];
  const prefill: [number[], number[]] = [[], []];
  const step: [number[], number[]] = [[], []];
  for (let r = 0; r < reps; r++) {
    const engine = await WorkerStageEngine.load(dir, { intraOpNumThreads: 1, fuseAllStages: true });
    try {
      const t0 = performance.now();
      const ex = await startBenchExecutor(engine);
      start.push(performance.now() - t0);
      try {
        for (const g of [0, 1] as const) {
          const times = await timedSession(ex.client, seededPrompt(promptLen, 2 * r + g), decode + 1, engine.stageCount, true);
          prefill[g].push(times[0]);
          step[g].push(median(times.slice(1)));
        }
      } finally {
        await ex.stop();
      }
    } finally {
      await engine.close();
    }
    process.stderr.write(
      `rep ${r + 1}/${reps}: start ${start[r].toFixed(0)} ms; decode step first ${step[0][r].toFixed(2)} ms, second ${step[1][r].toFixed(2)} ms\n`,
    );
  }
  const ratio = step[0].map((x, i) => x / step[1][i]);
  const out = (s: string): void => void process.stdout.write(`${s}\n`);
  out(
    `\nfirst generation after start, preset ${preset}, prompt ${promptLen}, ${decode} decode steps, per-step path, median [min-max] of ${reps} fresh executors`,
  );
  out(`executor start (warm-up and profile): ${formatSpread(spread(start), 0)} ms`);
  out('| generation | prefill ms | decode ms per step |\n|---|---:|---:|');
  out(`| first after start | ${formatSpread(spread(prefill[0]), 1)} | ${formatSpread(spread(step[0]))} |`);
  out(`| second | ${formatSpread(spread(prefill[1]), 1)} | ${formatSpread(spread(step[1]))} |`);
  out(`decode step first / second: ${formatSpread(spread(ratio))}x`);
}

main().catch((e: unknown) => {
  process.stderr.write(`first-generation-bench: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
