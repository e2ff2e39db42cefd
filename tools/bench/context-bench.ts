/**
 * Decode step cost over the context: one all-server decode step after prompts of several
 * lengths, straight on the engine (no gRPC, no scheduler), either as one fused engine call
 * (`--mode fused`, the head cut to the last row: how the executor's server-side decode loop runs
 * a step alone) or one engine call per stage (`--mode staged`: how it runs steps batched with
 * other sessions' and a split's server range). For each
 * context, one session prefills that many positions, then takes `--steps` one-token steps; the
 * figure is the median step. Contexts are measured in an order that changes every repetition,
 * so a machine's drift does not follow the context. Prints per context the median [min–max]
 * over repetitions of the median step, and the least-squares line over contexts (what the
 * executor's StageStats fits from live traffic and publishes as StageTiming.decode_fixed_ms and
 * decode_ms_per_context_token).
 *
 *   npx tsx tools/bench/context-bench.ts [--mode fused|staged] [--preset small] [--contexts 16,64,128,256,512] [--steps 16] [--reps 5] [--threads 1]
 */
import { OnnxStageEngine } from '@tandem/server-executor';
import type { HostTensor } from '@tandem/protocol';
import { arg, benchModel, formatSpread, median, seededPrompt, spread } from './bench-kit';

const preset = arg('preset', 'small');
const contexts = arg('contexts', '16,64,128,256,512')
  .split(',')
  .map((s) => Number(s));
const steps = Number(arg('steps', '16'));
const reps = Number(arg('reps', '5'));
const threads = Number(arg('threads', '1'));
const mode = arg('mode', 'fused');
if (mode !== 'fused' && mode !== 'staged') throw new RangeError(`--mode must be fused or staged, given ${mode}`);
for (const [name, v, min] of [
  ['steps', steps, 1],
  ['reps', reps, 1],
  ['threads', threads, 1],
] as const) {
  if (!Number.isInteger(v) || v < min) throw new RangeError(`--${name} must be an integer >= ${min}, given ${String(v)}`);
}
if (contexts.some((c) => !Number.isInteger(c) || c < 1)) throw new RangeError(`--contexts must list integers >= 1, given ${arg('contexts', '')}`);

const ids = (n: number, seed: number): HostTensor => ({ dtype: 'int64', shape: [1, n], data: BigInt64Array.from(seededPrompt(n, seed), BigInt) });

/** One step of `input` through every stage: one fused call, or one call per stage. */
async function step(engine: OnnxStageEngine, input: HostTensor, cache: ReturnType<OnnxStageEngine['newCache']>): Promise<HostTensor> {
  const n = engine.stageCount;
  if (mode === 'fused') return engine.runRange(0, n, input, cache, true);
  let x = input;
  for (let s = 0; s < n; s++) x = (await engine.runBatch(s, [x], [cache]))[0];
  return x;
}

/** Median ms of `steps` one-token steps after a prefill of `context` positions. */
async function stepMs(engine: OnnxStageEngine, context: number, seed: number): Promise<number> {
  const cache = engine.newCache();
  try {
    await engine.runRange(0, engine.stageCount, ids(context, seed), cache, true);
    const times: number[] = [];
    for (let k = 0; k < steps; k++) {
      const t0 = performance.now();
      await step(engine, ids(1, seed + k + 1), cache);
      times.push(performance.now() - t0);
    }
    return median(times);
  } finally {
    engine.releaseCache(cache);
  }
}

async function main(): Promise<void> {
  const nPositions = Math.max(...contexts) + steps;
  const dir = await benchModel(preset);
  const engine = await OnnxStageEngine.load(dir, { intraOpNumThreads: threads, fuseAllStages: true });
  if (nPositions > engine.nPositions)
    throw new RangeError(`--contexts: the longest context plus --steps (${nPositions}) exceeds the model's ${engine.nPositions} positions`);
  try {
    await engine.warmup();
    await stepMs(engine, contexts[0], 0); // the first calls of a session shape are slower
    const ms: number[][] = contexts.map(() => []);
    for (let r = 0; r < reps; r++) {
      const order = contexts.map((_, i) => (i + r) % contexts.length);
      if (r % 2) order.reverse();
      const took: string[] = [];
      for (const i of order) {
        const m = await stepMs(engine, contexts[i], r + 1);
        ms[i].push(m);
        took.push(`${contexts[i]}: ${m.toFixed(2)} ms`);
      }
      process.stderr.write(`rep ${r + 1}/${reps}: ${took.join(', ')}\n`);
    }
    const xs = contexts;
    const ys = ms.map((m) => median(m));
    const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
    const my = ys.reduce((a, b) => a + b, 0) / ys.length;
    const slope = xs.reduce((a, x, i) => a + (x - mx) * (ys[i] - my), 0) / xs.reduce((a, x) => a + (x - mx) ** 2, 0);
    const out = (s: string): void => void process.stdout.write(`${s}\n`);
    out(
      `\ndecode step over its context, preset ${preset}, ${mode === 'fused' ? 'one fused call' : 'one call per stage'} per step, ${threads} thread(s), median [min-max] of ${reps} repetitions of the median of ${steps} steps`,
    );
    out('| context (positions before the step) | ms per step | × the shortest context |\n|---:|---:|---:|');
    for (const [i, c] of contexts.entries()) out(`| ${c} | ${formatSpread(spread(ms[i]))} | ${(ys[i] / ys[0]).toFixed(2)} |`);
    out(`least-squares line over the medians: ${(my - slope * mx).toFixed(3)} ms + ${slope.toFixed(4)} ms per position of context`);
  } finally {
    await engine.close();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`context-bench: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
