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
 */
import { performance } from 'node:perf_hooks';
import {
  evaluatePlacement, instanceFromShape, linkFromMbps, solveDp, solveDpGrid,
  type PlacementInstance, type PlacementResult, type TransformerShape,
} from '@tandem/dp';

const GPT2_MEDIUM: TransformerShape = {
  name: 'gpt2-medium', dModel: 1024, dFF: 4096, encoderLayers: 0, decoderLayers: 24, crossAttention: false,
  inputBytesPerToken: 8, embedFlopsPerToken: 0, headKind: 'lm', headOutputs: 50257, activationBytes: 4,
};

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

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
    const server = evaluatePlacement(draft, stages.map(() => 'server')).latencyMs;
    const client = evaluatePlacement(draft, stages.map(() => 'client')).latencyMs;
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

function main(): void {
  const batch = arg('batch', 10_000);
  const rounds = arg('rounds', 3);
  const resolutionMs = arg('resolution-ms', 0.1);
  const instances = makeInstances(batch, resolutionMs, 42);
  const meanSla = instances.reduce((a, i) => a + i.slaMs, 0) / instances.length;
  const meanSteps = instances.reduce((a, i) => a + Math.floor(i.slaMs / resolutionMs), 0) / instances.length;
  process.stdout.write(`dp-bench: ${batch} instances × ${instances[0].stages.length} stages (GPT-2 medium shape), mean SLA ${meanSla.toFixed(1)} ms = ${meanSteps.toFixed(0)} steps of ${resolutionMs} ms\n`);
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
    if (b.serverWork > a.serverWork * (1 + 1e-9)) { gridWorse++; gridExtra += (b.serverWork - a.serverWork) / Math.max(a.serverWork, 1e-12); }
  }
  process.stdout.write('| solver | µs per instance (best of rounds) | median | instances/s |\n|---|---:|---:|---:|\n');
  for (const row of rows) {
    const sorted = [...row.runs].sort((x, y) => x - y);
    const best = sorted[0];
    const median = sorted[Math.floor(sorted.length / 2)];
    process.stdout.write(`| ${row.solver} | ${best.toFixed(1)} | ${median.toFixed(1)} | ${Math.round(1e6 / median)} |\n`);
  }
  process.stdout.write(`dp-grid did more work than dp on ${gridWorse} of 2000 instances (mean excess there ${(100 * gridExtra / Math.max(gridWorse, 1)).toFixed(2)} %)\n`);
}

main();
