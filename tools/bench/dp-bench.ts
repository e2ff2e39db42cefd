/**
 * Solver benchmark (a script, not a test): time per instance of `dp` and `dp-grid` on
 * 50-stage instances shaped like GPT-2 medium (embed, 24 × (attn, mlp), head), in batches
 * of 10,000 seeded random instances.
 *
 *   npx tsx tools/bench/dp-bench.ts [--batch 10000] [--rounds 3] [--resolution-ms 0.1]
 *
 * Instances vary the prompt length, client and server speeds, links and SLA, with ±20 %
 * per-stage noise as measured profiles have; the SLA sits between the all-server latency
 * and the all-client latency, where the choice is non-trivial.
 *
 * A second part times `dp` on generation instances (docs/placement.md, "Generations with
 * TTFT/TPOT SLOs"): GPT-2 small (26 stages) and a 48-block model (98 stages), per stated SLO
 * set, and checks it against a brute force over all 2^S placements on a 14-stage model
 * (`--gen-batch`, default 2000 instances per row; `--brute` instances, default 100).
 *
 * A third part times `dp-phased` (docs/placement.md, "Prefill and decode placed apart") on
 * the same generations with each attention stage's KV cache stated (K and V in float32,
 * 8 · dModel bytes per token), GPT-2 small (26 stages) and 24 blocks × 1024 (50 stages),
 * beside `dp` on the same instances, and checks it against a brute force over all 4^S pairs
 * on a 6-stage model (`--phased-batch`, default 1000 per row; `--phased-only` runs this part alone).
 */
import { performance } from 'node:perf_hooks';
import {
  approxEqual,
  evaluateGeneration,
  evaluatePhased,
  evaluatePlacement,
  instanceFromShape,
  linkFromMbps,
  requestCosts,
  sloCheck,
  sloRatio,
  solveDp,
  solveDpGrid,
  solveGenerationDp,
  solvePhasedDp,
  type GenerationInstance,
  type Location,
  type PlacementInstance,
  type PlacementResult,
  type Slo,
  type TransformerShape,
} from '@tandem/dp';
import { SIMULATED_MODELS } from '@tandem/simulate';
import { seededRandom } from '@tandem/util';

/** GPT-2 medium as the simulator models it. */
const GPT2_MEDIUM: TransformerShape = (() => {
  const m = SIMULATED_MODELS.find((x) => x.shape.name === 'gpt2-medium');
  if (!m) throw new Error('@tandem/simulate models no gpt2-medium');
  return m.shape;
})();

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

const rng = seededRandom;

function makeInstances(count: number, resolutionMs: number, seed: number): PlacementInstance[] {
  const rnd = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];
  const out: PlacementInstance[] = [];
  while (out.length < count) {
    const base = instanceFromShape({
      model: GPT2_MEDIUM,
      request: { kind: 'prefill', tokens: pick([64, 128, 256, 512]) },
      client: { flopsPerSecond: pick([1, 2, 5, 10]) * 1e12, efficiency: 0.5, overheadMsPerStage: 0.05 },
      server: { flopsPerSecond: pick([50, 100]) * 1e12, efficiency: 0.5, overheadMsPerStage: 0.02 },
      uplink: linkFromMbps(2 + 18 * rnd(), pick([50, 100, 200])),
      downlink: linkFromMbps(2 + 18 * rnd(), pick([200, 500, 1000])),
      slaMs: 1,
      resolutionMs,
    });
    const stages = base.stages.map((s) => {
      const serverMs = s.serverMs * (0.8 + 0.4 * rnd());
      return { ...s, clientMs: s.clientMs * (0.8 + 0.4 * rnd()), serverMs, serverWork: serverMs };
    });
    const draft = { ...base, stages };
    const server = evaluatePlacement(
      draft,
      stages.map(() => 'server'),
    ).latencyMs;
    const client = evaluatePlacement(
      draft,
      stages.map(() => 'client'),
    ).latencyMs;
    const lo = Math.min(server, client);
    const hi = Math.max(server, client);
    out.push({ ...draft, slaMs: lo + (hi - lo) * rnd() * 0.8 + 0.1 * (hi - lo) });
  }
  return out;
}

function timeBatch(instances: readonly PlacementInstance[], solver: (i: PlacementInstance) => PlacementResult): { usPerInstance: number; sink: number } {
  let sink = 0;
  const t0 = performance.now();
  for (const inst of instances) sink += solver(inst).serverWork;
  const ms = performance.now() - t0;
  return { usPerInstance: (ms * 1000) / instances.length, sink };
}

/** GPT-2 with `layers` blocks of width `dModel` (an FFN 4 times as wide). */
const gptShape = (layers: number, dModel: number): TransformerShape => ({
  ...GPT2_MEDIUM,
  name: `gpt-${layers}x${dModel}`,
  dModel,
  dFF: 4 * dModel,
  decoderLayers: layers,
});

type SloSet = readonly (keyof Slo)[];

/**
 * Seeded generation instances of `shape`: per-pass prefill and decode times from the FLOPs
 * of requestCosts (decode per pass = the generation's decode FLOPs / m), ±20 % per-stage
 * noise, an entry cost, server-side decoding on; each stated SLO drawn from a bit below the
 * better of all-client and all-server (so some instances are infeasible) to well inside the range.
 */
function makeGenerations(shape: TransformerShape, count: number, slos: SloSet, seed: number): GenerationInstance[] {
  const rnd = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];
  const out: GenerationInstance[] = [];
  while (out.length < count) {
    const n = pick([32, 128, 512]);
    const m = pick([15, 31, 63]);
    const costs = requestCosts(shape, { kind: 'generation', promptTokens: n, decodeSteps: m });
    const client = pick([0.5, 1, 2, 5]) * 1e9 * 0.5; // FLOP per ms at 50 % of peak
    const server = pick([20, 50, 100]) * 1e9 * 0.5;
    const stages = costs.stages.map((c) => {
      const noise = (): number => 0.8 + 0.4 * rnd();
      return {
        name: c.name,
        clientPrefillMs: (c.prefillFlops / client + 0.05) * noise(),
        clientDecodeMs: (c.decodeFlops / m / client + 0.05) * noise(),
        serverPrefillMs: (c.prefillFlops / server + 0.02) * noise(),
        serverDecodeMs: (c.decodeFlops / m / server + 0.02) * noise(),
        inBytesPerToken: c.inBytes / (n + m),
      };
    });
    const draft: GenerationInstance = {
      stages,
      promptTokens: n,
      decodeSteps: m,
      outBytesPerPass: 8,
      uplink: linkFromMbps(1 + 30 * rnd(), pick([20, 100, 1000])),
      downlink: linkFromMbps(1 + 30 * rnd(), pick([100, 500, 1000])),
      slo: { e2eMs: 1 },
      serverEntryWork: 0.3 * rnd(),
    };
    const ends = (['client', 'server'] as const).map((side) =>
      evaluateGeneration(
        draft,
        stages.map(() => side),
      ),
    );
    const slo: { -readonly [K in keyof Slo]: Slo[K] } = {};
    for (const k of slos) {
      const lo = Math.min(ends[0][k], ends[1][k]);
      const hi = Math.max(ends[0][k], ends[1][k]);
      slo[k] = Math.max(lo + (hi - lo) * (1.05 * rnd() - 0.05), 0.5 * lo);
    }
    out.push({ ...draft, slo });
  }
  return out;
}

/** The optimum by enumeration (the definition), for the agreement check. */
function bruteForceGeneration(inst: GenerationInstance): { feasible: boolean; work: number; ratio: number } {
  const S = inst.stages.length;
  let best = { feasible: false, work: Infinity, ratio: Infinity };
  const p = new Array<Location>(S);
  for (let mask = 0; mask < 1 << S; mask++) {
    for (let i = 0; i < S; i++) p[i] = mask & (1 << i) ? 'server' : 'client';
    const c = evaluateGeneration(inst, p);
    const feasible = sloCheck(inst.slo, c).feasible;
    const ratio = sloRatio(inst.slo, c);
    if (feasible ? !best.feasible || c.serverWork < best.work : !best.feasible && ratio < best.ratio) best = { feasible, work: c.serverWork, ratio };
  }
  return best;
}

function generationPart(): void {
  const batch = arg('gen-batch', 2000);
  const brute = arg('brute', 100);
  const sets: readonly SloSet[] = [['e2eMs'], ['ttftMs', 'tpotMs'], ['e2eMs', 'ttftMs', 'tpotMs']];
  process.stdout.write(`\ngeneration instances (dp with TTFT/TPOT/E2E SLOs, server-side decoding on), ${batch} per row\n`);
  process.stdout.write(
    '| model | stages | SLOs stated | dp µs per instance (best of 3) | feasible | streamed all-server chosen |\n|---|---:|---|---:|---:|---:|\n',
  );
  for (const [label, shape] of [
    ['gpt2 small', gptShape(12, 768)],
    ['48 blocks × 1600', gptShape(48, 1600)],
  ] as const) {
    for (const [k, set] of sets.entries()) {
      const instances = makeGenerations(shape, batch, set, 1000 + k);
      for (const inst of instances.slice(0, 100)) solveGenerationDp(inst);
      const runs: number[] = [];
      let feasible = 0;
      let streamed = 0;
      for (let r = 0; r < 3; r++) {
        const t0 = performance.now();
        for (const inst of instances) {
          const a = solveGenerationDp(inst);
          if (r === 0) {
            feasible += a.feasible ? 1 : 0;
            streamed += a.serverDecoding ? 1 : 0;
          }
        }
        runs.push(((performance.now() - t0) * 1000) / instances.length);
      }
      process.stdout.write(`| ${label} | ${instances[0].stages.length} | ${set.join(' + ')} | ${Math.min(...runs).toFixed(1)} | ${feasible} | ${streamed} |\n`);
    }
  }
  // Agreement and speed against the brute force, where 2^S is affordable.
  const small = makeGenerations(gptShape(6, 512), brute, ['e2eMs', 'ttftMs', 'tpotMs'], 77);
  let agree = 0;
  let dpMs = 0;
  let bruteMs = 0;
  for (const inst of small) {
    let t0 = performance.now();
    const a = solveGenerationDp(inst);
    dpMs += performance.now() - t0;
    t0 = performance.now();
    const b = bruteForceGeneration(inst);
    bruteMs += performance.now() - t0;
    if (a.feasible === b.feasible && (a.feasible ? approxEqual(a.serverWork, b.work) : approxEqual(sloRatio(inst.slo, a), b.ratio))) agree++;
  }
  process.stdout.write(
    `14-stage generations, all three SLOs: dp ${((1000 * dpMs) / small.length).toFixed(1)} µs vs brute force ${((1000 * bruteMs) / small.length).toFixed(0)} µs per instance; dp = brute force on ${agree} of ${small.length}\n`,
  );
}

/** `instances` with each attention stage's KV cache stated: K and V in float32, 8 · dModel bytes per token. */
function withKv(shape: TransformerShape, instances: readonly GenerationInstance[]): GenerationInstance[] {
  return instances.map((inst) => ({
    ...inst,
    stages: inst.stages.map((s) => (s.name.endsWith('.attn') ? { ...s, kvBytesPerToken: 8 * shape.dModel } : s)),
  }));
}

function phasedPart(): void {
  const batch = arg('phased-batch', 1000);
  process.stdout.write(`\nphased generations (dp-phased beside dp, KV caches stated), ${batch} per row\n`);
  process.stdout.write(
    '| model | stages | SLOs stated | dp-phased µs per instance (best of 3) | dp µs | feasible: dp-phased / dp | phases differ | server work dp-phased / dp (mean where both feasible) |\n|---|---:|---|---:|---:|---:|---:|---:|\n',
  );
  const sets: readonly SloSet[] = [['e2eMs'], ['ttftMs', 'tpotMs'], ['e2eMs', 'ttftMs', 'tpotMs']];
  for (const [label, shape] of [
    ['gpt2 small', gptShape(12, 768)],
    ['24 blocks × 1024', gptShape(24, 1024)],
  ] as const) {
    for (const [k, set] of sets.entries()) {
      const instances = withKv(shape, makeGenerations(shape, batch, set, 2000 + k));
      for (const inst of instances.slice(0, 50)) solvePhasedDp(inst);
      const time = (solver: (i: GenerationInstance) => unknown): number => {
        const runs: number[] = [];
        for (let r = 0; r < 3; r++) {
          const t0 = performance.now();
          for (const inst of instances) solver(inst);
          runs.push(((performance.now() - t0) * 1000) / instances.length);
        }
        return Math.min(...runs);
      };
      const phasedUs = time(solvePhasedDp);
      const dpUs = time(solveGenerationDp);
      let feasiblePhased = 0;
      let feasibleDp = 0;
      let differ = 0;
      let ratioSum = 0;
      let both = 0;
      for (const inst of instances) {
        const a = solvePhasedDp(inst);
        const b = solveGenerationDp(inst);
        feasiblePhased += a.feasible ? 1 : 0;
        feasibleDp += b.feasible ? 1 : 0;
        if (a.prefillPlacement.some((l, i) => l !== a.decodePlacement[i])) differ++;
        if (a.feasible && b.feasible && b.serverWork > 0) {
          ratioSum += a.serverWork / b.serverWork;
          both++;
        }
      }
      process.stdout.write(
        `| ${label} | ${instances[0].stages.length} | ${set.join(' + ')} | ${phasedUs.toFixed(1)} | ${dpUs.toFixed(1)} | ${feasiblePhased} / ${feasibleDp} | ${differ} | ${(ratioSum / Math.max(both, 1)).toFixed(3)} |\n`,
      );
    }
  }
  const small = withKv(gptShape(2, 256), makeGenerations(gptShape(2, 256), arg('brute', 100), ['e2eMs', 'ttftMs', 'tpotMs'], 91));
  let agree = 0;
  for (const inst of small) {
    const a = solvePhasedDp(inst);
    const S = inst.stages.length;
    let best = { feasible: false, work: Infinity, ratio: Infinity };
    const side = (mask: number): Location[] => Array.from({ length: S }, (_, i): Location => (mask & (1 << i) ? 'server' : 'client'));
    for (let pm = 0; pm < 1 << S; pm++) {
      for (let dm = 0; dm < 1 << S; dm++) {
        const c = evaluatePhased(inst, side(pm), side(dm));
        const feasible = sloCheck(inst.slo, c).feasible;
        const ratio = sloRatio(inst.slo, c);
        if (feasible ? !best.feasible || c.serverWork < best.work : !best.feasible && ratio < best.ratio) best = { feasible, work: c.serverWork, ratio };
      }
    }
    if (a.feasible === best.feasible && (a.feasible ? approxEqual(a.serverWork, best.work) : approxEqual(sloRatio(inst.slo, a), best.ratio))) agree++;
  }
  process.stdout.write(
    `${small[0].stages.length}-stage phased generations, all three SLOs: dp-phased = brute force over 4^S pairs on ${agree} of ${small.length}\n`,
  );
}

function main(): void {
  if (process.argv.includes('--phased-only')) {
    phasedPart();
    return;
  }
  const batch = arg('batch', 10_000);
  const rounds = arg('rounds', 3);
  const resolutionMs = arg('resolution-ms', 0.1);
  const instances = makeInstances(batch, resolutionMs, 42);
  const meanSla = instances.reduce((a, i) => a + i.slaMs, 0) / instances.length;
  const meanSteps = instances.reduce((a, i) => a + Math.floor(i.slaMs / resolutionMs), 0) / instances.length;
  process.stdout.write(
    `dp-bench: ${batch} instances × ${instances[0].stages.length} stages (GPT-2 medium shape), mean SLA ${meanSla.toFixed(1)} ms = ${meanSteps.toFixed(0)} steps of ${resolutionMs} ms\n`,
  );
  // Warm-up so the JIT has compiled both solvers before timing.
  timeBatch(instances.slice(0, 500), solveDp);
  timeBatch(instances.slice(0, 200), solveDpGrid);
  const rows: { solver: string; runs: number[] }[] = [
    { solver: 'dp', runs: [] },
    { solver: `dp-grid @ ${resolutionMs} ms`, runs: [] },
  ];
  let gridWorse = 0;
  let gridExtra = 0;
  for (let r = 0; r < rounds; r++) {
    rows[0].runs.push(timeBatch(instances, solveDp).usPerInstance);
    rows[1].runs.push(timeBatch(instances, solveDpGrid).usPerInstance);
    process.stderr.write(`round ${r + 1}/${rounds}: dp ${rows[0].runs[r].toFixed(1)} µs, dp-grid ${rows[1].runs[r].toFixed(1)} µs per instance\n`);
  }
  for (const inst of instances.slice(0, 2000)) {
    const a = solveDp(inst);
    const b = solveDpGrid(inst);
    if (b.serverWork > a.serverWork * (1 + 1e-9)) {
      gridWorse++;
      gridExtra += (b.serverWork - a.serverWork) / Math.max(a.serverWork, 1e-12);
    }
  }
  process.stdout.write('| solver | µs per instance (best of rounds) | median | instances/s |\n|---|---:|---:|---:|\n');
  for (const row of rows) {
    const sorted = [...row.runs].sort((x, y) => x - y);
    const best = sorted[0];
    const median = sorted[Math.floor(sorted.length / 2)];
    process.stdout.write(`| ${row.solver} | ${best.toFixed(1)} | ${median.toFixed(1)} | ${Math.round(1e6 / median)} |\n`);
  }
  process.stdout.write(
    `dp-grid did more work than dp on ${gridWorse} of 2000 instances (mean excess there ${((100 * gridExtra) / Math.max(gridWorse, 1)).toFixed(2)} %)\n`,
  );
  generationPart();
  phasedPart();
}

main();
