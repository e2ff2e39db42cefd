/**
 * Engine benchmark: the executor with onnxruntime in a worker thread (EXECUTOR_ENGINE=worker)
 * against onnxruntime on the event loop (inline), both through a real ExecutorServer on
 * 127.0.0.1, repetitions interleaved in the same run.
 *
 * 1. Responsiveness: N concurrent P-token prefills (every stage but the head, so that N full
 *    logit matrices do not have to fit in memory) on the `gpt2` preset, while a probe loop
 *    sends grpc.health.v1 Check one after another (10 ms apart: probes cost the event-loop
 *    thread CPU that, on 2 cores, the inference thread then lacks); reports the probes' p50 / p99 /
 *    max latency, the event loop's largest delay (perf_hooks) and the wall time of the prefills.
 * 2. Decode overhead of the worker hop: one all-server generation (128-token prompt, then D
 *    greedy tokens, a step per token over the stream) on each preset; reports decode ms/token.
 *
 * 3. The hop itself: one-token decode steps straight on each engine (no gRPC, no scheduler) on
 *    the `tiny` preset, whose stages take microseconds; best of 5 blocks of 50 tokens per
 *    repetition (the minimum resists a loaded machine), as µs per stage call.
 *
 * Figures are medians over the repetitions with [min–max].
 *
 *   npx tsx tools/bench/engine-bench.ts [--prefill-preset gpt2] [--sessions 16] [--prompt 512]
 *        [--decode-presets small,gpt2] [--decode 64] [--reps 3] [--threads 2] [--max-batch-tokens 4096] [--probe-ms 10]
 */
import * as os from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { HealthClient, type HostTensor } from '@tandem/protocol';
import { OnnxStageEngine, WorkerStageEngine, type StageEngine } from '@tandem/server-executor';
import { sleep } from '@tandem/util';
import { arg, benchModel, startBenchExecutor, timedSession, type BenchExecutor } from './bench-kit';

const opts = {
  prefillPreset: arg('prefill-preset', 'gpt2'),
  sessions: Number(arg('sessions', '16')),
  prompt: Number(arg('prompt', '512')),
  decodePresets: arg('decode-presets', 'small,gpt2').split(',').filter(Boolean),
  decode: Number(arg('decode', '64')),
  reps: Number(arg('reps', '3')),
  threads: Number(arg('threads', '2')),
  maxBatchTokens: Number(arg('max-batch-tokens', '4096')),
  probeMs: Number(arg('probe-ms', '10')),
};
type Mode = 'worker' | 'inline';
const MODES: readonly Mode[] = ['worker', 'inline'];
const say = (s: string): void => {
  process.stderr.write(`${s}\n`);
};
const sorted = (xs: number[]): number[] => [...xs].sort((a, b) => a - b);
const pct = (xs: number[], p: number): number => {
  const s = sorted(xs);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};
const median = (xs: number[]): number => pct(xs, 50);
const spread = (xs: number[], digits = 1): string => `${median(xs).toFixed(digits)} [${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)}]`;
const ids = (n: number, seed: number): number[] => Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104_729) % 50_000);

async function startServer(mode: Mode, dir: string): Promise<BenchExecutor & { engine: StageEngine }> {
  const load = { intraOpNumThreads: opts.threads };
  const engine = mode === 'worker' ? await WorkerStageEngine.load(dir, load) : await OnnxStageEngine.load(dir, load);
  const ex = await startBenchExecutor(engine, { maxSessions: 256, maxMessageBytes: 256 << 20, maxBatch: 16, maxBatchTokens: opts.maxBatchTokens });
  return { ...ex, engine };
}

interface Responsiveness {
  p50: number;
  p99: number;
  max: number;
  loopMaxMs: number;
  probes: number;
  wallMs: number;
}

async function responsiveness(mode: Mode, dir: string): Promise<Responsiveness> {
  const { engine, client, addr, stop } = await startServer(mode, dir);
  const health = new HealthClient(addr, grpc.credentials.createInsecure());
  const check = (): Promise<void> => new Promise((resolve, reject) => health.check({ service: '' }, (e) => (e ? reject(e) : resolve())));
  try {
    await check();
    const loop = monitorEventLoopDelay({ resolution: 5 });
    loop.enable();
    const t0 = performance.now();
    let done = false;
    const work = Promise.all(
      Array.from({ length: opts.sessions }, (_, i) => timedSession(client, ids(opts.prompt, i + 1), 1, engine.stageCount - 1, false)),
    ).finally(() => {
      done = true;
    });
    const lat: number[] = [];
    while (!done) {
      const p0 = performance.now();
      await check();
      lat.push(performance.now() - p0);
      await sleep(opts.probeMs);
    }
    await work;
    const wallMs = performance.now() - t0;
    loop.disable();
    return { p50: pct(lat, 50), p99: pct(lat, 99), max: Math.max(...lat), loopMaxMs: loop.max / 1e6, probes: lat.length, wallMs };
  } finally {
    health.close();
    await stop();
  }
}

async function decodeMsPerToken(mode: Mode, dir: string): Promise<number> {
  const { engine, client, stop } = await startServer(mode, dir);
  try {
    await timedSession(client, ids(128, 99), 4, engine.stageCount, true); // warm the path
    const times = await timedSession(client, ids(128, 7), opts.decode + 1, engine.stageCount, true);
    return times.reduce((a, b) => a + b, 0) / times.length;
  } finally {
    await stop();
  }
}

/** Best mean ms per one-token step through every stage, over 5 blocks of 50 steps, straight on the engine. */
async function engineStepMs(mode: Mode, dir: string): Promise<{ ms: number; stages: number }> {
  const load = { intraOpNumThreads: 1 };
  const engine: StageEngine = mode === 'worker' ? await WorkerStageEngine.load(dir, load) : await OnnxStageEngine.load(dir, load);
  try {
    await engine.warmup();
    let best = Number.POSITIVE_INFINITY;
    for (let block = 0; block < 5; block++) {
      const cache = engine.newCache();
      const t0 = performance.now();
      for (let k = 0; k < 50; k++) {
        let x: HostTensor = { dtype: 'int64', shape: [1, 1], data: BigInt64Array.of(BigInt(k + 1)) };
        for (let s = 0; s < engine.stageCount; s++) x = (await engine.runBatch(s, [x], [cache]))[0];
      }
      best = Math.min(best, (performance.now() - t0) / 50);
      engine.releaseCache(cache);
    }
    return { ms: best, stages: engine.stageCount };
  } finally {
    await engine.close();
  }
}

async function main(): Promise<void> {
  say(
    `engine bench: ${os.cpus().length} cpus, load average ${os
      .loadavg()
      .map((x) => x.toFixed(1))
      .join(' ')}, MALLOC_TOP_PAD_=${process.env.MALLOC_TOP_PAD_ ?? 'unset'}`,
  );
  const resp: Record<Mode, Responsiveness[]> = { worker: [], inline: [] };
  const dec: Record<string, Record<Mode, number[]>> = {};
  const prefillDir = opts.sessions > 0 ? await benchModel(opts.prefillPreset) : '';
  const decodeDirs = await Promise.all(opts.decodePresets.map((p) => benchModel(p)));
  const tinyDir = await benchModel('tiny');
  const hop: Record<Mode, number[]> = { worker: [], inline: [] };
  let tinyStages = 0;
  for (let r = 0; r < opts.reps; r++) {
    for (const mode of r % 2 ? [...MODES].reverse() : MODES) {
      if (opts.sessions > 0) {
        const x = await responsiveness(mode, prefillDir);
        resp[mode].push(x);
        say(
          `rep ${r + 1} ${mode}: ${opts.sessions}×${opts.prompt} prefills in ${x.wallMs.toFixed(0)} ms; health p99 ${x.p99.toFixed(1)} ms, max ${x.max.toFixed(1)} ms over ${x.probes} probes; loop delay max ${x.loopMaxMs.toFixed(1)} ms`,
        );
      }
      const step = await engineStepMs(mode, tinyDir);
      hop[mode].push(step.ms);
      tinyStages = step.stages;
      for (const [k, preset] of opts.decodePresets.entries()) {
        const ms = await decodeMsPerToken(mode, decodeDirs[k]);
        (dec[preset] ??= { worker: [], inline: [] })[mode].push(ms);
        say(`rep ${r + 1} ${mode}: ${preset} decode ${ms.toFixed(2)} ms/token`);
      }
    }
  }
  const out = (s: string): void => {
    process.stdout.write(`${s}\n`);
  };
  out(
    `\nexecutor engine: worker thread vs inline, ${opts.threads} onnxruntime threads, EXECUTOR_MAX_BATCH_TOKENS ${opts.maxBatchTokens}, median [min–max] of ${opts.reps} repetitions`,
  );
  if (opts.sessions > 0) {
    out(
      `\n${opts.sessions} concurrent ${opts.prompt}-token prefills (all stages but the head), ${opts.prefillPreset} preset, health probed every ${opts.probeMs} ms\n`,
    );
    out(
      '| engine | prefills wall ms | health p50 ms | health p99 ms | health max ms | event-loop delay max ms | probes |\n|---|---:|---:|---:|---:|---:|---:|',
    );
    for (const mode of MODES) {
      const xs = resp[mode];
      out(
        `| ${mode} | ${spread(
          xs.map((x) => x.wallMs),
          0,
        )} | ${spread(xs.map((x) => x.p50))} | ${spread(xs.map((x) => x.p99))} | ${spread(xs.map((x) => x.max))} | ${spread(xs.map((x) => x.loopMaxMs))} | ${spread(
          xs.map((x) => x.probes),
          0,
        )} |`,
      );
    }
  }
  if (opts.decodePresets.length) {
    out(`\ndecode ms/token, one all-server generation through gRPC (128-token prompt, ${opts.decode} tokens)\n`);
    out('| preset | worker | inline | worker / inline (per repetition) |\n|---|---:|---:|---:|');
    for (const preset of opts.decodePresets) {
      const d = dec[preset];
      const ratios = d.worker.map((w, i) => w / d.inline[i]);
      out(`| ${preset} | ${spread(d.worker, 2)} | ${spread(d.inline, 2)} | ${spread(ratios, 3)} |`);
    }
  }
  const perCallUs = hop.worker.map((w, i) => ((w - hop.inline[i]) / tinyStages) * 1000);
  out(`\none-token steps straight on the engine, tiny preset (${tinyStages} stage calls per token), best of 5 blocks of 50\n`);
  out('| worker ms/token | inline ms/token | hop cost per stage call, µs |\n|---:|---:|---:|');
  out(`| ${spread(hop.worker, 3)} | ${spread(hop.inline, 3)} | ${spread(perCallUs, 0)} |`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
