import type { Slo } from '@tandem/dp';
import { Rng } from '@tandem/util';
import type { ArrivalSpec, Scenario } from './scenario';
import { requestSlo } from './scenario';

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
  return new Map(
    s.requestClasses.map((rc) => [
      rc.name,
      Array.from({ length: rc.promptPool }, () => {
        const n = rng.int(rc.promptTokens.min, rc.promptTokens.max);
        return { requestClass: rc.name, ids: Array.from({ length: n }, () => rng.int(ID_LO, ID_HI - 1)), maxNewTokens: rc.outputTokens.max };
      }),
    ]),
  );
}

/**
 * The arrival trace of one rate: times from the scenario's arrival process, each request's
 * device class and request class drawn by weight, its prompt drawn from the class's pool and
 * its output length uniformly from the class's range. Deterministic in (scenario, rate,
 * seed): every policy gets the same trace. Times and attributes come from separate streams,
 * so every rate sees the same sequence of request kinds.
 */
export function buildTrace(
  s: Scenario,
  rate: number,
  durationS: number,
  seed: number = s.seed,
  pools: Map<string, PoolPrompt[]> = promptPools(s),
): TraceRequest[] {
  const times = arrivalTimes(s.arrival, rate, durationS * 1000, new Rng(seed ^ 0x5bd1e995));
  const attrs = new Rng(seed);
  const dw = s.deviceClasses.map((d) => d.weight);
  const rw = s.requestClasses.map((r) => r.weight);
  return times.map((atMs, index) => {
    const device = s.deviceClasses[attrs.pick(dw)].name;
    const rc = s.requestClasses[attrs.pick(rw)];
    const pool = pools.get(rc.name);
    if (!pool)
      throw new RangeError(`buildTrace: pools must hold the prompts of request class '${rc.name}', given pools of ${[...pools.keys()].join(', ') || 'none'}`);
    const promptIds = pool[attrs.int(0, pool.length - 1)].ids;
    const maxNewTokens = attrs.int(rc.outputTokens.min, rc.outputTokens.max);
    return { index, atMs, device, requestClass: rc.name, promptIds, maxNewTokens, slo: requestSlo(s, device, rc.name) };
  });
}
