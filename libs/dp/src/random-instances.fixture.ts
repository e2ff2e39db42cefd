import { approxEqual } from './evaluate';
/**
 * Seeded random instances for the unit tests (not exported from the package).
 * Shaped like transformers: embed (token ids in), attn and mlp stages per block with the
 * hidden-state boundary, head (one token id or logits out), with per-stage noise so stages
 * are heterogeneous, as measured profiles are.
 */
import { instanceFromShape, linkFromMbps, type TransformerShape } from './cost-model';
import { evaluateGeneration, type GenerationCost, type GenerationInstance, type GenerationStage, type Slo } from './generation';
import type { PlacementInstance, Stage } from './types';

export { seededRandom } from '@tandem/util';

function pick<T>(rnd: () => number, xs: readonly T[]): T {
  return xs[Math.floor(rnd() * xs.length)];
}

/** A GPT-2-like shape with `layers` blocks. */
export function gptLikeShape(layers: number, dModel: number): TransformerShape {
  return {
    name: `gpt-${layers}x${dModel}`,
    dModel,
    dFF: 4 * dModel,
    encoderLayers: 0,
    decoderLayers: layers,
    crossAttention: false,
    inputBytesPerToken: 8,
    embedFlopsPerToken: 0,
    headKind: 'lm',
    headOutputs: 50257,
    activationBytes: 4,
  };
}

/**
 * A transformer-shaped instance with `stageCount` = 2·layers + 2 stages (even, >= 2 → at
 * least 0 blocks), random sequence length, device speeds, links and per-stage noise, and an
 * SLA drawn between a bit below the fastest placement and well above all-server.
 */
export function randomTransformerInstance(rnd: () => number, layers: number): PlacementInstance {
  const dModel = pick(rnd, [64, 256, 768, 1024]);
  const tokens = pick(rnd, [1, 16, 128, 512, 1024]);
  const base = instanceFromShape({
    model: gptLikeShape(layers, dModel),
    request:
      rnd() < 0.25
        ? { kind: 'generation', promptTokens: tokens, decodeSteps: pick(rnd, [1, 8, 32]) }
        : { kind: 'prefill', tokens, output: rnd() < 0.2 ? 'logits' : 'token' },
    client: { flopsPerSecond: pick(rnd, [0.2e12, 0.5e12, 1e12, 5e12]), efficiency: 0.5, overheadMsPerStage: rnd() * 0.2 },
    server: { flopsPerSecond: pick(rnd, [20e12, 50e12, 100e12]), efficiency: 0.5, overheadMsPerStage: rnd() * 0.05 },
    uplink: linkFromMbps(rnd() * 30, pick(rnd, [5, 20, 100, 1000])),
    downlink: linkFromMbps(rnd() * 30, pick(rnd, [20, 100, 500, 1000])),
    slaMs: 1,
  });
  // Measured-like noise: each stage's times vary by up to ±40 %, work follows server time.
  const stages: Stage[] = base.stages.map((s) => {
    const serverMs = s.serverMs * (0.6 + 0.8 * rnd());
    return { ...s, clientMs: s.clientMs * (0.6 + 0.8 * rnd()), serverMs, serverWork: rnd() < 0.1 ? 0 : serverMs };
  });
  const draft: PlacementInstance = { ...base, stages };
  return { ...draft, slaMs: randomSla(rnd, draft), resolutionMs: 1 };
}

/** Fully random small instances, zeros included, to reach corner cases. */
export function randomRawInstance(rnd: () => number, stageCount: number): PlacementInstance {
  const num = (scale: number): number => (rnd() < 0.1 ? 0 : rnd() * scale);
  const stages: Stage[] = Array.from({ length: stageCount }, (_, i) => ({
    name: `s${i}`,
    clientMs: num(20),
    serverMs: num(5),
    serverWork: Math.round(num(10)),
    inBytes: Math.round(num(5000)),
  }));
  const draft: PlacementInstance = {
    stages,
    outBytes: Math.round(num(3000)),
    uplink: { latencyMs: num(5), bytesPerMs: 50 + rnd() * 1000 },
    downlink: { latencyMs: num(5), bytesPerMs: 50 + rnd() * 4000 },
    slaMs: 1,
  };
  return { ...draft, slaMs: randomSla(rnd, draft), resolutionMs: 0.25 };
}

function randomSla(rnd: () => number, draft: PlacementInstance): number {
  const clientAll = draft.stages.reduce((a, s) => a + s.clientMs, 0);
  const serverAll =
    draft.uplink.latencyMs +
    draft.stages[0].inBytes / draft.uplink.bytesPerMs +
    draft.stages.reduce((a, s) => a + s.serverMs, 0) +
    draft.downlink.latencyMs +
    draft.outBytes / draft.downlink.bytesPerMs;
  const lo = Math.min(clientAll, serverAll);
  const hi = Math.max(clientAll, serverAll);
  // Mostly between the two pure placements, sometimes below both (often infeasible) or above.
  const u = rnd();
  if (u < 0.1) return lo * (0.3 + 0.6 * rnd());
  if (u < 0.2) return hi * (1 + rnd());
  return lo + (hi - lo) * rnd() || 1;
}

/** Options of {@link randomGenerationInstance}. */
export interface RandomGenerationOptions {
  /** Which SLOs to state (a subset of e2eMs, ttftMs, tpotMs; non-empty). */
  readonly slos: readonly ('e2eMs' | 'ttftMs' | 'tpotMs')[];
  readonly serverDecoding: boolean;
  /** Server work per entry per pass (0: none). */
  readonly entryWork: number;
  /** The server's queue wait per entry and per server-decoded step, ms (optional, default 0). */
  readonly queueMs?: number;
  /** The queue wait of a decode pass's entries and of a server-decoded step, when they differ from `queueMs` (optional). */
  readonly decodeQueueMs?: number;
  readonly streamedQueueMs?: number;
  /** Scale of the SLOs between the fastest and slowest pure placement; below 0 tends to infeasible. */
  readonly tightness: number;
  /**
   * When given, the instance states `serverWholeModel`: the stages' server sums × this factor
   * for prefill, × `wholeModel[1]` for decode (below 1 a fused call, above 1 dearer than stage by stage).
   */
  readonly wholeModel?: readonly [number, number];
  /** When true, some stages keep a KV cache (`kvBytesPerToken`), as attention stages do, for phased instances. */
  readonly kv?: boolean;
}

/**
 * A random generation instance with `stageCount` stages: prefill and decode times per side
 * (zeros included, decode loosely tied to prefill as in real models, sometimes not), random
 * prompt length, decode passes, links, explicit server work on some stages, and the stated
 * SLOs drawn around the all-client and all-server figures by `tightness`.
 */
export function randomGenerationInstance(rnd: () => number, stageCount: number, opts: RandomGenerationOptions): GenerationInstance {
  const num = (scale: number): number => (rnd() < 0.08 ? 0 : rnd() * scale);
  const stages: GenerationStage[] = Array.from({ length: stageCount }, (_, i) => {
    const clientPrefillMs = num(40);
    const serverPrefillMs = num(8);
    const coupled = rnd() < 0.6;
    const stage: { -readonly [K in keyof GenerationStage]: GenerationStage[K] } = {
      name: `s${i}`,
      clientPrefillMs,
      serverPrefillMs,
      clientDecodeMs: coupled ? clientPrefillMs * (0.05 + 0.2 * rnd()) : num(8),
      serverDecodeMs: coupled ? serverPrefillMs * (0.05 + 0.2 * rnd()) : num(2),
      inBytesPerToken: pick(rnd, [8, 256, 3072, Math.round(num(4000))]),
    };
    if (rnd() < 0.2) stage.serverPrefillWork = num(8);
    if (rnd() < 0.2) stage.serverDecodeWork = num(2);
    return stage;
  });
  if (opts.kv) {
    for (let i = 0; i < stages.length; i++) {
      if (rnd() < 0.6) stages[i] = { ...stages[i], kvBytesPerToken: pick(rnd, [64, 1024, 6144, Math.round(num(20_000))]) };
    }
  }
  let draft: GenerationInstance = {
    stages,
    promptTokens: pick(rnd, [1, 4, 16, 128]),
    decodeSteps: pick(rnd, [0, 1, 3, 8, 31]),
    outBytesPerPass: pick(rnd, [0, 8, 8, 200]),
    uplink: { latencyMs: num(20), bytesPerMs: pick(rnd, [100, 1000, 10_000, 100_000]) },
    downlink: { latencyMs: num(20), bytesPerMs: pick(rnd, [500, 5000, 50_000]) },
    slo: { e2eMs: 1 },
    serverDecoding: opts.serverDecoding,
    ...(opts.entryWork > 0 ? { serverEntryWork: opts.entryWork } : {}),
    ...(opts.queueMs ? { serverQueueMs: opts.queueMs } : {}),
    ...(opts.decodeQueueMs !== undefined ? { serverDecodeQueueMs: opts.decodeQueueMs } : {}),
    ...(opts.streamedQueueMs !== undefined ? { serverStreamedQueueMs: opts.streamedQueueMs } : {}),
  };
  if (opts.wholeModel) {
    const sum = (f: (s: GenerationStage) => number): number => stages.reduce((a, s) => a + f(s), 0);
    const [p, d] = opts.wholeModel;
    draft = {
      ...draft,
      serverWholeModel: {
        serverPrefillMs: p * sum((s) => s.serverPrefillMs),
        serverDecodeMs: d * sum((s) => s.serverDecodeMs),
        serverPrefillWork: p * sum((s) => s.serverPrefillWork ?? s.serverPrefillMs),
        serverDecodeWork: d * sum((s) => s.serverDecodeWork ?? s.serverDecodeMs),
      },
    };
  }
  const all = (side: 'client' | 'server'): GenerationCost =>
    evaluateGeneration(
      { ...draft, serverDecoding: false },
      stages.map(() => side),
    );
  const c = all('client');
  const s = all('server');
  const slo: { -readonly [K in keyof Slo]: Slo[K] } = {};
  for (const k of opts.slos) {
    const lo = Math.min(c[k], s[k]);
    const hi = Math.max(c[k], s[k]);
    const v = lo + (hi - lo) * (opts.tightness + 0.3 * (rnd() - 0.5));
    slo[k] = v > 0 ? v : Math.max(lo * 0.5, 0.01);
  }
  return { ...draft, slo };
}

/** Figures a brute force keeps of each placement of a generation. */
export interface Enumerated {
  readonly feasible: boolean;
  readonly serverWork: number;
  readonly e2eMs: number;
  /** Largest ratio latency / SLO. */
  readonly ratio: number;
}

/**
 * The optimum among enumerated placements, straight from the definition: the least work among
 * the feasible ones, else the least ratio then the least work; ties (1e-9 relative) to the
 * lower E2E.
 */
export function optimumOf<T extends Enumerated>(all: readonly T[]): T {
  const feasible = all.filter((b) => b.feasible);
  let pool: T[];
  if (feasible.length > 0) {
    const w = Math.min(...feasible.map((b) => b.serverWork));
    pool = feasible.filter((b) => approxEqual(b.serverWork, w));
  } else {
    const r = Math.min(...all.map((b) => b.ratio));
    const tied = all.filter((b) => approxEqual(b.ratio, r));
    const w = Math.min(...tied.map((b) => b.serverWork));
    pool = tied.filter((b) => approxEqual(b.serverWork, w));
  }
  return pool.reduce((a, b) => (b.e2eMs < a.e2eMs ? b : a));
}

/**
 * Asserts that no algorithm of `algorithms` answers any of `instances` feasibly with less server
 * work than dp (1e-9 relative), and that greedy does strictly more somewhere: the sample is rich
 * enough to tell them apart.
 */
export function expectDpNeverBeaten<I, A extends string>(
  instances: readonly I[],
  dp: (inst: I) => { readonly feasible: boolean; readonly serverWork: number },
  algorithms: readonly A[],
  solve: (inst: I, algorithm: A) => { readonly feasible: boolean; readonly serverWork: number },
): void {
  let strictlyBetter = 0;
  for (const inst of instances) {
    const best = dp(inst);
    for (const algorithm of algorithms) {
      const r = solve(inst, algorithm);
      if (!r.feasible) continue;
      expect(best.feasible).toBe(true);
      expect(r.serverWork).toBeGreaterThanOrEqual(best.serverWork * (1 - 1e-9));
      if (algorithm === 'greedy' && r.serverWork > best.serverWork * (1 + 1e-6)) strictlyBetter++;
    }
  }
  expect(strictlyBetter).toBeGreaterThan(0);
}
