/**
 * Model benchmark: creates the `small` and `gpt2` presets (cached under the temp directory), then
 * measures with the same code the services use (StageRunner through SplitPipeline):
 * load time, 128-token prefill (all logits, and last-token-only as generate does), decode ms/token
 * with the KV cache, mean time per stage kind, the overhead of a split placement with two
 * internal boundaries (server / client / server, two runners in one process) against all-server
 * (repetitions interleaved, medians), and runBatch of 8 decode sessions against 8 separate runs
 * at an mlp stage and at the head.
 *
 * Against a monolithic graph, in the same run: the benchmark builds ONE ONNX graph of the whole
 * model from its stage graphs (buildFusedGraph: same nodes, same external weights, past/present
 * K/V per block), runs it with a plain onnxruntime-node InferenceSession, and interleaves it with
 * the staged path (StageRunner, one session per stage, all stages in one process, last-row head)
 * and with runRange over a fused whole-model session (what a server running every stage of a
 * step uses), for each of --mono-threads. It checks that the three give the same tokens (and the
 * same first decode logits) and prints decode ms/token and prefill with the ratios to monolithic.
 *
 *   npx tsx tools/bench/model-bench.ts [--presets small,gpt2] [--reps 5] [--threads 2]
 *        [--mono-threads 2,1] [--mono-only] [--decode 64] [--spin] [--json-out FILE] [--models-dir DIR]
 *
 * Prints a table on stdout and writes the figures as JSON (default <tmp>/tandem-bench/model-bench.json).
 * Set MALLOC_TOP_PAD_=268435456 in the environment to keep glibc from returning freed memory to
 * the OS between decode steps (the run records whether it was set).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ensurePresetModel } from '@tandem/launcher';
import { type KvCache, type Manifest, type StageKind, SplitPipeline, StageRunner } from '@tandem/model';
import type { HostTensor } from '@tandem/protocol';
import { formatSpread, median, spread, type Spread, type VsMonolithic, vsMonolithicRows } from './bench-kit';
import { type GenRun, Monolithic, timeGeneration } from './monolithic';

interface Opts {
  presets: string[];
  reps: number;
  threads: number;
  monoThreads: number[];
  monoOnly: boolean;
  decode: number;
  spin: boolean;
  jsonOut: string;
  modelsDir: string;
}

function parseOpts(argv: string[]): Opts {
  const get = (k: string): string | undefined => {
    const i = argv.indexOf(`--${k}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const base = path.join(os.tmpdir(), 'tandem-bench');
  return {
    presets: (get('presets') ?? 'small,gpt2').split(','),
    reps: Number(get('reps') ?? 5),
    threads: Number(get('threads') ?? 2),
    monoThreads: (get('mono-threads') ?? '2,1')
      .split(',')
      .filter((x) => x !== '')
      .map(Number),
    decode: Number(get('decode') ?? 64),
    spin: argv.includes('--spin'),
    monoOnly: argv.includes('--mono-only'),
    jsonOut: get('json-out') ?? path.join(base, 'model-bench.json'),
    modelsDir: get('models-dir') ?? path.join(base, 'models'),
  };
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
const now = (): number => performance.now();
const log = (s: string): void => {
  process.stderr.write(`${s}\n`);
};

/** The same generation through a StageRunner: runRange over every stage (fused when the runner has that range). */
async function runnerGenerate(runner: StageRunner, prompt: readonly number[], newTokens: number): Promise<GenRun> {
  const n = runner.manifest.stages.length;
  const V = runner.manifest.config.vocabSize;
  const cache = runner.newCache();
  const ids = (xs: readonly number[]): HostTensor => ({ dtype: 'int64', shape: [1, xs.length], data: BigInt64Array.from(xs, BigInt) });
  try {
    return await timeGeneration(async (xs) => (await runner.runRange(0, n, ids(xs), cache, { lastOnly: true })).data as Float32Array, prompt, newTokens, V);
  } finally {
    cache.clear();
  }
}

type MonoVariant = 'monolithic' | 'staged' | 'fused';
interface MonoStats {
  decodeMsPerToken: Spread;
  decodeCpuMsPerToken: Spread;
  prefillMs: Spread;
}
interface MonoRatios {
  decode: Spread;
  decodeCpu: Spread;
  prefill: Spread;
}
/** One thread count against the monolithic graph: each variant's figures, and each runner variant over the monolithic one. */
type MonolithicResult = { threads: number; tokensIdentical: boolean; firstDecodeLogitsIdentical: boolean; firstDecodeLogitsMaxAbsDiff: number } & VsMonolithic<
  MonoVariant,
  MonoStats,
  MonoRatios
>;
interface PlacementFigures {
  placement: string;
  prefillFullMs: number;
  prefillLastMs: number;
  decodeMsPerToken: number;
}
interface BatchFigures {
  sequentialMs: number;
  batchMs: number;
  ratio: number;
}
/** One preset with `--mono-only`: the monolithic comparison alone. */
interface MonoPresetResult {
  preset: string;
  stages: number;
  createMs: number | undefined;
  vsMonolithic: MonolithicResult[];
}
/** One preset: load times, the two placements, per-stage means, runBatch and the monolithic comparison. */
interface FullPresetResult extends MonoPresetResult {
  loadMsAllServer: number;
  loadMsSplit: number;
  allServer: PlacementFigures;
  split: PlacementFigures;
  splitOverhead: { prefillLast: number; prefillFull: number; decode: number };
  perStageMeanMs: Record<string, number>;
  runBatch8: { mlp: BatchFigures; head: BatchFigures };
}
type PresetResult = MonoPresetResult | FullPresetResult;

/**
 * Monolithic graph vs staged runner vs fused runRange, interleaved, at `threads` intra-op threads.
 * Ratios are per repetition (variant / monolithic of the same repetition), then medians.
 */
async function benchMonolithic(dir: string, manifest: Manifest, prompt: number[], threads: number, o: Opts): Promise<MonolithicResult> {
  const n = manifest.stages.length;
  const mono = await Monolithic.load(dir, manifest, threads, o.spin);
  const staged = await StageRunner.load(dir, { intraOpNumThreads: threads, allowSpinning: o.spin });
  const fused = await StageRunner.load(dir, { intraOpNumThreads: threads, allowSpinning: o.spin, fusedRanges: [[0, n]] });
  try {
    const gen: Record<MonoVariant, () => Promise<GenRun>> = {
      monolithic: () => mono.generate(prompt, o.decode),
      staged: () => runnerGenerate(staged, prompt, o.decode),
      fused: () => runnerGenerate(fused, prompt, o.decode),
    };
    const variants = Object.keys(gen) as MonoVariant[];
    // Warm-up and the equality check: same tokens, same first decode logits.
    const first = {} as Record<MonoVariant, GenRun>;
    for (const v of variants) first[v] = await gen[v]();
    let maxAbsDiff = 0;
    let identical = true;
    for (const v of ['staged', 'fused'] as const) {
      if (first[v].tokens.join() !== first.monolithic.tokens.join()) throw new Error(`${v} generated other tokens than the monolithic graph`);
      const a = first[v].firstDecodeLogits;
      const b = first.monolithic.firstDecodeLogits;
      for (let j = 0; j < a.length; j++) {
        const d = Math.abs(a[j] - b[j]);
        if (d > maxAbsDiff) maxAbsDiff = d;
        if (a[j] !== b[j] && !(Number.isNaN(a[j]) && Number.isNaN(b[j]))) identical = false;
      }
    }
    const runs: Record<MonoVariant, GenRun[]> = { monolithic: [], staged: [], fused: [] };
    for (let r = 0; r < o.reps; r++) {
      const order = variants.map((_, i) => variants[(i + r) % variants.length]);
      for (const v of order) runs[v].push(await gen[v]());
      log(
        `[${manifest.source?.kind === 'synthetic' ? manifest.source.preset : 'model'} ${threads}t] rep ${r + 1}/${o.reps}: decode ms/token ${variants.map((v) => `${v} ${runs[v][r].decodeMs.toFixed(2)}`).join(', ')}`,
      );
    }
    const out: MonolithicResult = { threads, tokensIdentical: true, firstDecodeLogitsIdentical: identical, firstDecodeLogitsMaxAbsDiff: maxAbsDiff };
    for (const v of variants) {
      out[v] = {
        decodeMsPerToken: spread(runs[v].map((x) => x.decodeMs)),
        decodeCpuMsPerToken: spread(runs[v].map((x) => x.decodeCpuMs)),
        prefillMs: spread(runs[v].map((x) => x.prefillMs)),
      };
      if (v !== 'monolithic') {
        out[`${v}VsMonolithic` as const] = {
          decode: spread(runs[v].map((x, i) => x.decodeMs / runs.monolithic[i].decodeMs)),
          decodeCpu: spread(runs[v].map((x, i) => x.decodeCpuMs / runs.monolithic[i].decodeCpuMs)),
          prefill: spread(runs[v].map((x, i) => x.prefillMs / runs.monolithic[i].prefillMs)),
        };
      }
    }
    return out;
  } finally {
    await Promise.all([mono.close(), staged.close(), fused.close()]);
  }
}

interface PlacementRun {
  prefillFullMs: number[];
  prefillLastMs: number[];
  decodeMsPerToken: number[];
}

async function measurePlacement(
  p: SplitPipeline,
  prompt: number[],
  decodeTokens: number,
  stageMs: Map<string, number[]>,
): Promise<{ full: number; last: number; decode: number }> {
  let t = now();
  await p.forward(prompt);
  const full = now() - t;
  const session = p.newCaches();
  const kindOf = (i: number): StageKind => p.manifest.stages[i].kind;
  const rec =
    (phase: string) =>
    (i: number, _side: string, ms: number): void => {
      const k = `${phase}:${kindOf(i)}`;
      (stageMs.get(k) ?? (stageMs.set(k, []).get(k) as number[])).push(ms);
    };
  t = now();
  let logits = await p.step(session, prompt, { lastOnly: true, onStage: rec('prefill') });
  const last = now() - t;
  const V = p.manifest.config.vocabSize;
  t = now();
  for (let k = 0; k < decodeTokens; k++) {
    let best = 0;
    for (let j = 1; j < V; j++) if (logits.data[j] > logits.data[best]) best = j;
    logits = await p.step(session, [best], { lastOnly: true, onStage: rec('decode') });
  }
  const decode = (now() - t) / decodeTokens;
  session.client?.clear();
  session.server?.clear();
  return { full, last, decode };
}

async function benchBatch(runner: StageRunner, stage: number, reps: number): Promise<{ sequentialMs: number; batchMs: number }> {
  const D = runner.manifest.config.nEmbd;
  const B = 8;
  const caches: KvCache[] = Array.from({ length: B }, () => runner.newCache());
  const inputs: HostTensor[] = Array.from({ length: B }, (_, k) => ({
    dtype: 'float32',
    shape: [1, 1, D],
    data: Float32Array.from({ length: D }, (_, i) => Math.sin(k * 31 + i)),
  }));
  const seq: number[] = [];
  const bat: number[] = [];
  for (let r = 0; r < reps + 2; r++) {
    let t = now();
    for (let k = 0; k < B; k++) await runner.run(stage, inputs[k], caches[k]);
    const s = now() - t;
    t = now();
    await runner.runBatch(stage, inputs, caches);
    const b = now() - t;
    if (r >= 2) {
      seq.push(s);
      bat.push(b);
    } // first two rounds warm up
  }
  return { sequentialMs: median(seq), batchMs: median(bat) };
}

async function benchPreset(preset: string, o: Opts): Promise<PresetResult> {
  const dir = path.join(o.modelsDir, `${preset}-seed1`);
  log(`[${preset}] model in ${dir}`);
  const t0 = now();
  let last = -1;
  const { manifest, created } = await ensurePresetModel(preset, dir, (done, total) => {
    const pct = Math.floor((100 * done) / total);
    if (pct >= last + 10 || done === total) {
      last = pct;
      log(`  create ${preset}: ${pct}%`);
    }
  });
  const createMs = created ? now() - t0 : undefined;
  const n = manifest.stages.length;
  if (o.monoOnly) {
    const prompt = Array.from({ length: 128 }, (_, i) => (i * 7919 + 13) % manifest.config.vocabSize);
    const vsMonolithic: MonolithicResult[] = [];
    for (const t of o.monoThreads) vsMonolithic.push(await benchMonolithic(dir, manifest, prompt, t, o));
    return { preset, stages: n, createMs, vsMonolithic };
  }
  const third = Math.floor(n / 3);
  const split = 'S'.repeat(third) + 'C'.repeat(third) + 'S'.repeat(n - 2 * third);
  const allServer = 'S'.repeat(n);
  const runnerOpts = { intraOpNumThreads: o.threads, allowSpinning: o.spin };

  const loadMs: number[] = [];
  const pipelines: Record<string, SplitPipeline> = {};
  for (const pl of [allServer, split]) {
    const t = now();
    pipelines[pl] = await SplitPipeline.load(dir, pl, runnerOpts);
    loadMs.push(now() - t);
  }
  log(`[${preset}] loaded: all-server ${loadMs[0].toFixed(0)} ms, split ${loadMs[1].toFixed(0)} ms`);
  // Prompt: 128 distinct ids (a fixed pattern, no tokenizer needed).
  const prompt = Array.from({ length: 128 }, (_, i) => (i * 7919 + 13) % manifest.config.vocabSize);
  // Warm-up: one short run each, so first-call allocations are not timed.
  for (const p of Object.values(pipelines)) await measurePlacement(p, prompt.slice(0, 8), 2, new Map());

  const runs: Record<string, PlacementRun> = {
    [allServer]: { prefillFullMs: [], prefillLastMs: [], decodeMsPerToken: [] },
    [split]: { prefillFullMs: [], prefillLastMs: [], decodeMsPerToken: [] },
  };
  const stageMs = new Map<string, number[]>();
  for (let r = 0; r < o.reps; r++) {
    // Interleave the placements so drift (thermal, other load) hits both alike.
    const order = r % 2 ? [split, allServer] : [allServer, split];
    for (const pl of order) {
      const m = await measurePlacement(pipelines[pl], prompt, o.decode, pl === allServer ? stageMs : new Map());
      runs[pl].prefillFullMs.push(m.full);
      runs[pl].prefillLastMs.push(m.last);
      runs[pl].decodeMsPerToken.push(m.decode);
    }
    log(
      `[${preset}] rep ${r + 1}/${o.reps}: all-server decode ${runs[allServer].decodeMsPerToken[r].toFixed(2)} ms/token, split ${runs[split].decodeMsPerToken[r].toFixed(2)}`,
    );
  }
  const med = (pl: string): Omit<PlacementFigures, 'placement'> => ({
    prefillFullMs: median(runs[pl].prefillFullMs),
    prefillLastMs: median(runs[pl].prefillLastMs),
    decodeMsPerToken: median(runs[pl].decodeMsPerToken),
  });
  const a = med(allServer);
  const s = med(split);
  const perStage: Record<string, number> = {};
  for (const [k, v] of [...stageMs].sort()) perStage[k] = mean(v);

  const server = pipelines[allServer].runner('server') as StageRunner;
  const mlp = await benchBatch(server, 2, Math.max(10, o.reps * 4));
  const head = await benchBatch(server, n - 1, Math.max(10, o.reps * 4));
  for (const p of Object.values(pipelines)) await p.close();

  const vsMonolithic: MonolithicResult[] = [];
  for (const t of o.monoThreads) vsMonolithic.push(await benchMonolithic(dir, manifest, prompt, t, o));
  return {
    preset,
    stages: n,
    createMs,
    loadMsAllServer: loadMs[0],
    loadMsSplit: loadMs[1],
    allServer: { placement: allServer, ...a },
    split: { placement: split, ...s },
    splitOverhead: {
      prefillLast: s.prefillLastMs / a.prefillLastMs,
      prefillFull: s.prefillFullMs / a.prefillFullMs,
      decode: s.decodeMsPerToken / a.decodeMsPerToken,
    },
    perStageMeanMs: perStage,
    runBatch8: { mlp: { ...mlp, ratio: mlp.batchMs / mlp.sequentialMs }, head: { ...head, ratio: head.batchMs / head.sequentialMs } },
    vsMonolithic,
  };
}

function table(results: PresetResult[]): string {
  const f = (x: unknown, d = 2): string => (typeof x === 'number' ? x.toFixed(d) : '-');
  const lines: string[] = [];
  for (const r of results) {
    lines.push(`\n== ${r.preset} (${r.stages} stages) ==`);
    if ('allServer' in r) {
      lines.push(
        `create ${r.createMs === undefined ? '(cached)' : `${f(r.createMs / 1000, 1)} s`}   load all-server ${f(r.loadMsAllServer, 0)} ms   load split ${f(r.loadMsSplit, 0)} ms`,
      );
      lines.push(`${'placement'.padEnd(30)} ${'prefill128 last'.padStart(16)} ${'prefill128 all'.padStart(15)} ${'decode ms/tok'.padStart(14)}`);
      for (const k of ['allServer', 'split'] as const) {
        const x = r[k];
        lines.push(
          `${`${k} ${x.placement}`.padEnd(30)} ${f(x.prefillLastMs, 1).padStart(16)} ${f(x.prefillFullMs, 1).padStart(15)} ${f(x.decodeMsPerToken).padStart(14)}`,
        );
      }
      lines.push(
        `split / all-server: prefill ${f(r.splitOverhead.prefillLast, 3)}x (all logits ${f(r.splitOverhead.prefillFull, 3)}x), decode ${f(r.splitOverhead.decode, 3)}x`,
      );
    }
    for (const m of r.vsMonolithic) {
      lines.push(
        `vs one monolithic graph, ${m.threads} thread(s); tokens identical, first decode logits ${m.firstDecodeLogitsIdentical ? 'bit-identical' : `max |diff| ${m.firstDecodeLogitsMaxAbsDiff.toExponential(2)}`}; median (min-max):`,
      );
      lines.push(
        `  ${'path'.padEnd(34)} ${'decode ms/tok'.padEnd(20)} ${'/ monolithic'.padEnd(20)} ${'decode CPU ms/tok'.padEnd(20)} ${'/ monolithic'.padEnd(20)} ${'prefill128 ms'.padEnd(22)} / monolithic`,
      );
      for (const { label, x, rel } of vsMonolithicRows<MonoVariant, MonoStats, MonoRatios>(m, [
        ['monolithic', 'monolithic graph (one session)'],
        ['staged', 'StageRunner, one session per stage'],
        ['fused', 'StageRunner.runRange, fused range'],
      ] as const)) {
        lines.push(
          `  ${label.padEnd(34)} ${formatSpread(x.decodeMsPerToken).padEnd(20)} ${(rel ? formatSpread(rel.decode, 3) : '1').padEnd(20)} ${formatSpread(x.decodeCpuMsPerToken).padEnd(20)} ${(rel ? formatSpread(rel.decodeCpu, 3) : '1').padEnd(20)} ${formatSpread(x.prefillMs, 1).padEnd(22)} ${rel ? formatSpread(rel.prefill, 3) : '1'}`,
        );
      }
    }
    if (!('allServer' in r)) continue;
    lines.push(
      `mean ms per stage: ${Object.entries(r.perStageMeanMs)
        .map(([k, v]) => `${k} ${f(v, 3)}`)
        .join(', ')}`,
    );
    lines.push(
      `runBatch 8 decode sessions vs 8 runs: mlp ${f(r.runBatch8.mlp.batchMs, 3)} vs ${f(r.runBatch8.mlp.sequentialMs, 3)} ms (${f(r.runBatch8.mlp.ratio, 3)}x), head ${f(r.runBatch8.head.batchMs, 3)} vs ${f(r.runBatch8.head.sequentialMs, 3)} ms (${f(r.runBatch8.head.ratio, 3)}x)`,
    );
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  const o = parseOpts(process.argv.slice(2));
  mkdirSync(o.modelsDir, { recursive: true });
  const results: PresetResult[] = [];
  for (const preset of o.presets) results.push(await benchPreset(preset, o));
  const env = {
    node: process.version,
    cpus: os.cpus().length,
    loadavg: os.loadavg().map((x) => Number(x.toFixed(2))),
    threads: o.threads,
    monoThreads: o.monoThreads,
    allowSpinning: o.spin,
    mallocTopPad: process.env.MALLOC_TOP_PAD_ ?? null,
    reps: o.reps,
    decodeTokens: o.decode,
    promptTokens: 128,
  };
  process.stdout.write(`${table(results)}\n\nenv: ${JSON.stringify(env)}\n`);
  mkdirSync(path.dirname(o.jsonOut), { recursive: true });
  writeFileSync(o.jsonOut, `${JSON.stringify({ env, results }, null, 2)}\n`);
  log(`wrote ${o.jsonOut}`);
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
