import type { ArrivalSpec, Scenario, Slo } from './scenario';
import { requestSlo } from './scenario';

/** A small seeded generator (mulberry32): uniform floats in [0, 1). Same seed, same stream. */
export class Rng {
  private s: number;
  constructor(seed: number) { this.s = seed >>> 0; }

  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Uniform in (0, 1]: safe under log. */
  private open(): number { return 1 - this.next(); }

  /** An integer uniform in [min, max]. */
  int(min: number, max: number): number { return min + Math.floor(this.next() * (max - min + 1)); }

  normal(): number { return Math.sqrt(-2 * Math.log(this.open())) * Math.cos(2 * Math.PI * this.next()); }

  exponential(mean: number): number { return -Math.log(this.open()) * mean; }

  /** Gamma(shape k, scale θ) by Marsaglia and Tsang (2000); k < 1 by the U^(1/k) boost. */
  gamma(k: number, theta: number): number {
    if (k < 1) return this.gamma(k + 1, theta) * this.open() ** (1 / k);
    const d = k - 1 / 3;
    const c = 1 / Math.sqrt(9 * d);
    for (;;) {
      let x: number;
      let v: number;
      do { x = this.normal(); v = 1 + c * x; } while (v <= 0);
      v = v * v * v;
      const u = this.open();
      if (Math.log(u) < 0.5 * x * x + d - d * v + d * Math.log(v)) return d * v * theta;
    }
  }

  /** Index drawn with probability proportional to `weights`. */
  pick(weights: readonly number[]): number {
    const total = weights.reduce((a, b) => a + b, 0);
    let r = this.next() * total;
    for (let i = 0; i < weights.length; i++) { r -= weights[i]; if (r < 0) return i; }
    return weights.length - 1;
  }
}

/**
 * Arrival times (ms from 0, ascending, all < durationMs) of an open-loop process at `rate`
 * requests/s: Poisson (exponential gaps) or gamma gaps with coefficient of variation `cv`
 * (shape 1/cv², same mean 1/rate; cv = 1 is Poisson, cv > 1 burstier).
 */
export function arrivalTimes(spec: ArrivalSpec, rate: number, durationMs: number, rng: Rng): number[] {
  const meanMs = 1000 / rate;
  const out: number[] = [];
  const shape = spec.process === 'gamma' ? 1 / (spec.cv * spec.cv) : 1;
  for (let t = 0; ;) {
    t += spec.process === 'gamma' ? rng.gamma(shape, meanMs / shape) : rng.exponential(meanMs);
    if (t >= durationMs) return out;
    out.push(t);
  }
}

/** One request of a trace. */
export interface TraceRequest {
  readonly index: number;
  /** When to send it, ms from the start of the trace. */
  readonly atMs: number;
  readonly device: string;
  readonly requestClass: string;
  readonly promptIds: readonly number[];
  readonly maxNewTokens: number;
  /** The SLOs it is judged by (its class's, with its device class's overrides). */
  readonly slo: Slo;
}

/** One prompt of a class's pool and the most tokens any request of the class asks for. */
export interface PoolPrompt {
  readonly requestClass: string;
  readonly ids: readonly number[];
  readonly maxNewTokens: number;
}

/** Token ids drawn for prompts: ordinary GPT-2 tokens, away from the special end-of-text id. */
const ID_LO = 256;
const ID_HI = 50_000;

/**
 * The prompt pools of a scenario, per request class: `promptPool` prompts of random ids with
 * lengths uniform in the class's range. Deterministic in the scenario's seed alone (not the
 * arrival seed), so every repeat and rate draws from the same pools, which one recording covers.
 */
export function promptPools(s: Scenario): Map<string, PoolPrompt[]> {
  const rng = new Rng((s.seed ^ 0x9e3779b9) >>> 0);
  return new Map(s.requestClasses.map((rc) => [rc.name, Array.from({ length: rc.promptPool }, () => {
    const n = rng.int(rc.promptTokens.min, rc.promptTokens.max);
    return { requestClass: rc.name, ids: Array.from({ length: n }, () => rng.int(ID_LO, ID_HI - 1)), maxNewTokens: rc.outputTokens.max };
  })]));
}

/**
 * The arrival trace of one rate: times from the scenario's arrival process, each request's
 * device class and request class drawn by weight, its prompt drawn from the class's pool and
 * its output length uniformly from the class's range. Deterministic in (scenario, rate,
 * seed): every policy gets the same trace. Times and attributes come from separate streams,
 * so every rate sees the same sequence of request kinds.
 */
export function buildTrace(s: Scenario, rate: number, durationS: number, seed: number = s.seed, pools: Map<string, PoolPrompt[]> = promptPools(s)): TraceRequest[] {
  const times = arrivalTimes(s.arrival, rate, durationS * 1000, new Rng(seed ^ 0x5bd1e995));
  const attrs = new Rng(seed);
  const dw = s.deviceClasses.map((d) => d.weight);
  const rw = s.requestClasses.map((r) => r.weight);
  return times.map((atMs, index) => {
    const device = s.deviceClasses[attrs.pick(dw)].name;
    const rc = s.requestClasses[attrs.pick(rw)];
    const pool = pools.get(rc.name)!;
    const promptIds = pool[attrs.int(0, pool.length - 1)].ids;
    const maxNewTokens = attrs.int(rc.outputTokens.min, rc.outputTokens.max);
    return { index, atMs, device, requestClass: rc.name, promptIds, maxNewTokens, slo: requestSlo(s, device, rc.name) };
  });
}
