/**
 * Executor batching benchmark: N concurrent all-server generations (prefill of P tokens, then D
 * decode steps each) through a real ExecutorServer on 127.0.0.1, with depth-synchronised
 * batching on and off, repetitions interleaved in the same run. Prints decode throughput
 * (tokens/s across sessions), p50 step latency and the ratio batching / no batching.
 *
 *   npx tsx tools/bench/executor-bench.ts [--preset small] [--sessions 8] [--prompt 32] [--decode 32] [--reps 3] [--threads 2] [--engine worker|inline]
 */
import { OnnxStageEngine, WorkerStageEngine } from '@tandem/server-executor';
import { arg, benchModel, generationArgs, median, startBenchExecutor, timedSession } from './bench-kit';

const { preset, sessions, promptLen, decode, reps, threads } = generationArgs(3);
/** Where onnxruntime runs, as EXECUTOR_ENGINE: the executor's default is the worker thread. */
const engineKind = arg('engine', 'worker');
const PROMPT = Array.from({ length: promptLen }, (_, i) => 100 + i);

async function main(): Promise<void> {
  if (engineKind !== 'worker' && engineKind !== 'inline') throw new Error(`--engine must be worker or inline, given '${engineKind.slice(0, 40)}'`);
  const dir = await benchModel(preset);
  const results: Record<string, { tokPerS: number[]; p50: number[] }> = { batched: { tokPerS: [], p50: [] }, unbatched: { tokPerS: [], p50: [] } };
  for (let r = 0; r < reps; r++) {
    for (const batching of [true, false]) {
      const engine =
        engineKind === 'inline'
          ? await OnnxStageEngine.load(dir, { intraOpNumThreads: threads })
          : await WorkerStageEngine.load(dir, { intraOpNumThreads: threads });
      const { client, stop } = await startBenchExecutor(engine, {
        maxSessions: 256,
        maxMessageBytes: 64 << 20,
        batching,
        maxBatch: 64,
        idleTimeoutMs: 300_000,
      });
      const t0 = performance.now();
      const lats = await Promise.all(Array.from({ length: sessions }, () => timedSession(client, PROMPT, decode + 1, engine.stageCount, true)));
      const s = (performance.now() - t0) / 1000;
      const key = batching ? 'batched' : 'unbatched';
      results[key].tokPerS.push((sessions * (decode + 1)) / s);
      results[key].p50.push(median(lats.flat()));
      process.stderr.write(`rep ${r + 1}/${reps} ${key}: ${((sessions * (decode + 1)) / s).toFixed(1)} tokens/s\n`);
      await stop();
    }
  }
  const b = median(results.batched.tokPerS);
  const u = median(results.unbatched.tokPerS);
  process.stdout.write(
    `\nexecutor batching, preset ${preset}, ${sessions} concurrent sessions, prompt ${promptLen}, ${decode} decode steps, ${threads} threads, ${engineKind} engine, median of ${reps}\n`,
  );
  process.stdout.write('| mode | tokens/s (all sessions) | p50 decode step ms |\n|---|---:|---:|\n');
  process.stdout.write(`| batching on | ${b.toFixed(1)} | ${median(results.batched.p50).toFixed(2)} |\n`);
  process.stdout.write(`| batching off | ${u.toFixed(1)} | ${median(results.unbatched.p50).toFixed(2)} |\n`);
  process.stdout.write(`| ratio on/off | ${(b / u).toFixed(2)}x | ${(median(results.batched.p50) / median(results.unbatched.p50)).toFixed(2)}x |\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${String(err)}\n`);
  process.exit(1);
});
