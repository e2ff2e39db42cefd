import { DEFAULT_CALIBRATION } from '@tandem/planner';
import { Rng } from '@tandem/util';
import {
  arrivalTimes,
  BUNDLED_SCENARIOS,
  buildTrace,
  compare,
  deviceSide,
  loadScenario,
  mergeSamples,
  plannerSloEnv,
  predictionErrors,
  predictionSamples,
  predictionSection,
  promptPools,
  requestSlo,
  scaleSlos,
  ratios,
  scenarioPathOf,
  serverContention,
  sloMet,
  sloScale,
  spreadOf,
  summarize,
  summarizePolicy,
  validateScenario,
  type Policy,
  type RateResult,
  type RequestRecord,
  type Scenario,
} from '../src';
import { rec } from './records';
import tiny from './tiny-scenario.json';

/** The tests' small valid scenario; `patch` replaces top-level fields. */
const scenario = (patch: Record<string, unknown> = {}): Record<string, unknown> => ({ ...tiny, ...patch });

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
function gapsOf(times: number[]): number[] {
  return times.map((t, i) => t - (i ? times[i - 1] : 0));
}
function cvOf(xs: number[]): number {
  const m = mean(xs);
  return Math.sqrt(mean(xs.map((x) => (x - m) ** 2))) / m;
}

/** One policy at one rate as the harness reports it, with the figures the comparisons read. */
const row = (policy: Policy, rate: number, cpu: number, goodput: number, att: number, patch: Partial<RateResult> = {}): RateResult => ({
  repeat: 0,
  seed: 1,
  policy,
  rate,
  serverCpuS: cpu,
  serverCpuPerRequestS: cpu / 10,
  serverCpuUtilisation: 0.5,
  serverRunQueueShare: 0,
  serverCoreOtherShare: 0,
  reportedServerComputeS: cpu / 2,
  agentsCpuS: 0,
  plans: {},
  deviceSide: deviceSide([], null, new Map(), 0, 0, 1),
  prediction: {},
  predictionSamples: {},
  stats: { ...summarize([], 1), requests: 10, completed: 10, metSla: Math.round(att * 10), goodput, slaAttainment: att },
  ...patch,
});

describe('arrivals', () => {
  const s = validateScenario(scenario());

  it('gives the same trace for the same seed and a different one for another seed', () => {
    const a = buildTrace(s, 5, 20, 7);
    const b = buildTrace(s, 5, 20, 7);
    expect(a).toEqual(b);
    expect(a.length).toBeGreaterThan(50);
    expect(buildTrace(s, 5, 20, 8)).not.toEqual(a);
    for (const r of a) {
      const cls = s.requestClasses.find((c) => c.name === r.requestClass)!;
      expect(r.promptIds.length).toBeGreaterThanOrEqual(cls.promptTokens.min);
      expect(r.promptIds.length).toBeLessThanOrEqual(cls.promptTokens.max);
      expect(r.slo.e2eMs).toBe(cls.e2eMs);
      expect(r.slo.ttftMs).toBe(cls.ttftMs);
    }
  });

  it('draws prompts from a pool per class that depends on the scenario seed only', () => {
    const pools = promptPools(s);
    expect(pools.get('short')).toHaveLength(3);
    const inPool = (r: { requestClass: string; promptIds: readonly number[] }): boolean =>
      pools.get(r.requestClass)!.some((p) => p.ids === r.promptIds || p.ids.join() === r.promptIds.join());
    for (const seed of [7, 8]) expect(buildTrace(s, 5, 20, seed).every(inPool)).toBe(true);
    expect(promptPools(s)).toEqual(pools);
    expect(promptPools(validateScenario(scenario({ seed: 6 })))).not.toEqual(pools);
    expect(pools.get('long')!.every((p) => p.maxNewTokens === 4)).toBe(true);
  });

  it('Poisson arrivals have the asked mean rate and exponential gaps (cv 1)', () => {
    const t = arrivalTimes({ process: 'poisson' }, 50, 200_000, new Rng(11));
    expect(t.length / 200).toBeGreaterThan(50 * 0.97);
    expect(t.length / 200).toBeLessThan(50 * 1.03);
    expect(cvOf(gapsOf(t))).toBeCloseTo(1, 1);
    expect(t.every((x, i) => i === 0 || x >= t[i - 1])).toBe(true);
  });

  it('gamma arrivals keep the mean rate and have the asked coefficient of variation', () => {
    for (const cv of [0.5, 2, 3]) {
      const t = arrivalTimes({ process: 'gamma', cv }, 50, 400_000, new Rng(3));
      const rate = t.length / 400;
      expect(Math.abs(rate - 50) / 50).toBeLessThan(0.05);
      expect(Math.abs(cvOf(gapsOf(t)) - cv) / cv).toBeLessThan(0.08);
    }
  });
});

describe('metrics', () => {
  it('computes TTFT, TPOT, ITL, E2E, goodput and SLA attainment as benchmark_serving does, counting failures', () => {
    const records = [
      rec({ index: 0, sentMs: 0, tokenMs: [100, 150, 210], endMs: 210, slo: { e2eMs: 300 }, serverComputeMs: 20, placement: 'SS' }),
      rec({ index: 1, sentMs: 500, tokenMs: [200, 300], endMs: 300, slo: { e2eMs: 250 }, serverComputeMs: 10, placement: 'CS' }),
      rec({ index: 2, sentMs: 900, status: 'DEADLINE_EXCEEDED', error: 'deadline', tokenMs: [50], endMs: 1500 }),
      rec({ index: 3, sentMs: 950, status: 'UNAVAILABLE', tokenMs: [], endMs: 5 }),
    ];
    const st = summarize(records, 2);
    expect(st.requests).toBe(4);
    expect(st.completed).toBe(2);
    expect(st.failed).toBe(2);
    expect(st.failures).toEqual({ DEADLINE_EXCEEDED: 1, UNAVAILABLE: 1 });
    // The run lasts until the last request ended: 900 + 1500 ms.
    expect(st.durationS).toBeCloseTo(2.4, 9);
    expect(st.metSla).toBe(1);
    expect(st.slaAttainment).toBeCloseTo(1 / 4, 9);
    expect(st.goodput).toBeCloseTo(1 / 2.4, 9);
    expect(st.requestThroughput).toBeCloseTo(2 / 2.4, 9);
    expect(st.outputTokenThroughput).toBeCloseTo(5 / 2.4, 9);
    expect(st.ttftMs).toMatchObject({ n: 2, mean: 150, p50: 150 });
    // TPOT: (210 - 100) / 2 = 55 and (300 - 200) / 1 = 100.
    expect(st.tpotMs).toMatchObject({ n: 2, mean: 77.5, p50: 77.5 });
    expect(st.tpotMs.p99).toBeCloseTo(55 + 0.99 * 45, 6);
    // ITL pooled: 50, 60, 100.
    expect(st.itlMs).toMatchObject({ n: 3, p50: 60 });
    expect(st.itlMs.mean).toBeCloseTo(70, 9);
    expect(st.e2eMs).toMatchObject({ n: 2, p50: 255 });
    expect(st.meanServerComputeMs).toBe(15);
    expect(st.placements).toEqual({ c: { SS: 1, CS: 1 } });
    expect(st.byClass['d/c']).toMatchObject({ requests: 4, metSla: 1 });
  });

  it('counts a request as good only when it meets every stated SLO: TTFT, TPOT (one-token requests have none) and E2E', () => {
    const slo = { ttftMs: 100, tpotMs: 50 };
    const records = [
      // TTFT 100 (= bound), TPOT (300 - 100) / 4 = 50 (= bound): good.
      rec({ index: 0, device: 'a', requestClass: 'x', slo, tokenMs: [100, 150, 200, 250, 300], endMs: 300 }),
      // TTFT 101: misses TTFT only.
      rec({ index: 1, device: 'a', requestClass: 'x', slo, tokenMs: [101, 120], endMs: 120 }),
      // TPOT (400 - 50) / 2 = 175: misses TPOT only.
      rec({ index: 2, device: 'b', requestClass: 'x', slo, tokenMs: [50, 60, 400], endMs: 400 }),
      // One token: TTFT met, no TPOT to miss: good.
      rec({ index: 3, device: 'b', requestClass: 'x', slo, tokenMs: [80], endMs: 80 }),
      // All three stated; TPOT (260 - 90) / 2 = 85 ≤ 90, but E2E 260 > 250 misses E2E only.
      rec({ index: 4, device: 'b', requestClass: 'y', slo: { ttftMs: 100, tpotMs: 90, e2eMs: 250 }, tokenMs: [90, 170, 260], endMs: 260 }),
      // Failed: misses every stated SLO even with a fast first token.
      rec({ index: 5, device: 'a', requestClass: 'y', slo: { ttftMs: 100, tpotMs: 80, e2eMs: 250 }, status: 'UNAVAILABLE', tokenMs: [10], endMs: 20 }),
    ];
    expect(records.map((r) => sloMet(r))).toEqual([
      { ttftMs: true, tpotMs: true },
      { ttftMs: false, tpotMs: true },
      { ttftMs: true, tpotMs: false },
      { ttftMs: true, tpotMs: true },
      { ttftMs: true, tpotMs: true, e2eMs: false },
      { ttftMs: false, tpotMs: false, e2eMs: false },
    ]);
    const st = summarize(records, 1);
    expect(st.metSla).toBe(2);
    expect(st.goodput).toBeCloseTo(2 / 1, 9);
    expect(st.slaAttainment).toBeCloseTo(2 / 6, 9);
    expect(st.byRequestClass.x).toEqual({ requests: 4, good: 2, ttft: { met: 3, stated: 4 }, tpot: { met: 3, stated: 4 }, e2e: null });
    expect(st.byRequestClass.y).toEqual({ requests: 2, good: 0, ttft: { met: 1, stated: 2 }, tpot: { met: 1, stated: 2 }, e2e: { met: 0, stated: 2 } });
    expect(st.byDevice.a).toEqual({ requests: 3, good: 1, ttft: { met: 1, stated: 3 }, tpot: { met: 2, stated: 3 }, e2e: { met: 0, stated: 1 } });
    expect(st.byClass['b/x']).toMatchObject({ requests: 2, good: 1, slo });
  });

  it('reports the spread of ratios over repeats and says when the range straddles 1', () => {
    expect(spreadOf([1.2, 1.4, 1.3])).toMatchObject({ n: 3, min: 1.2, median: 1.3, max: 1.4, withinNoise: false });
    expect(spreadOf([1.2, 1.4, 1.3])!.sd).toBeCloseTo(0.1, 9);
    expect(spreadOf([0.9, 1.1, null])).toMatchObject({ n: 2, median: 1, withinNoise: true });
    expect(spreadOf([0.8])).toMatchObject({ n: 1, sd: 0, withinNoise: null });
    expect(spreadOf([null])).toBeNull();
  });

  it('an empty or all-failed run gives zero goodput and null percentiles, not NaN', () => {
    const st = summarize([rec({ status: 'RESOURCE_EXHAUSTED', endMs: 3 })], 1);
    expect(st.goodput).toBe(0);
    expect(st.slaAttainment).toBe(0);
    expect(st.ttftMs.p50).toBeNull();
    expect(JSON.stringify(st)).not.toContain('NaN');
  });

  it('compares policies: CPU cut against server-only and goodput gain over greedy', () => {
    const rows = [
      row('server-only', 1, 3, 1, 1),
      row('server-only', 2, 3, 1.5, 0.8),
      row('greedy', 1, 2.4, 1, 1),
      row('greedy', 2, 2.4, 1.6, 0.85),
      row('dp', 1, 1.8, 1, 1),
      row('dp', 2, 1.8, 2, 0.9),
    ];
    const sums = (['server-only', 'greedy', 'dp'] as const).map((p) => summarizePolicy(p, rows, 0.9));
    expect(sums.map((s) => s.maxRateMeetingSla)).toEqual([1, 1, 2]);
    const c = compare(sums);
    expect(c.dpCpuReductionVsServerOnly).toBeCloseTo(0.4, 9);
    expect(c.dpGoodputGainVsGreedy).toBeCloseTo(0.25, 9);
    expect(c.targets).toEqual({ cpuCutAtLeastOneThird: true, goodputGainAtLeast19Percent: true });
    const r = ratios(rows, [1, 2], 0.9);
    expect(r.map((x) => x.against)).toEqual(['server-only', 'greedy']);
    expect(r[0].cpuPerRequest).toMatchObject({ n: 1, median: 0.6 });
    expect(r[1].byRate[1].goodput!.median).toBeCloseTo(2 / 1.6, 9);
    // dp-phased in the run: compared with server-only and with dp, after dp's own rows
    const withPhased = [...rows, row('dp-phased', 1, 0.9, 1, 1), row('dp-phased', 2, 0.9, 3, 1)];
    const rp = ratios(withPhased, [1, 2], 0.9);
    expect(rp.map((x) => `${x.of}/${x.against}`)).toEqual(['dp/server-only', 'dp/greedy', 'dp-phased/server-only', 'dp-phased/dp']);
    expect(rp[3].cpuPerRequest).toMatchObject({ n: 1, median: 0.5 });
    expect(rp[3].byRate[1].goodput!.median).toBeCloseTo(3 / 2, 9);
    // At 1 req/s every request of every policy was good (attainment 1); at 2 only dp-phased's.
    expect(rp.map((x) => x.byRate.map((b) => b.allGood))).toEqual([
      [true, false],
      [true, false],
      [true, false],
      [true, false],
    ]);
    // ... in every repeat: a second repeat where server-only missed one at 1 req/s takes it back.
    const twice = [
      ...withPhased,
      ...withPhased.map((x) => ({ ...x, repeat: 1, ...(x.policy === 'server-only' && x.rate === 1 ? { stats: { ...x.stats, metSla: 9 } } : {}) })),
    ];
    expect(ratios(twice, [1, 2], 0.9)[2].byRate[0].allGood).toBe(false);
    expect(ratios(twice, [1, 2], 0.9)[3].byRate[0].allGood).toBe(true);
  });

  it("lists a run as contended by other work on the server core, not by the executor's own threads waiting for each other", () => {
    const rows = [
      // Pinned: the executor's threads waited 0.6 s per s, but nothing else ran on the core.
      row('server-only', 1, 1, 1, 1, { serverRunQueueShare: 0.6, serverCoreOtherShare: 0.01 }),
      // Pinned: other work took 0.3 s per s of the core.
      row('dp', 1, 1, 1, 1, { serverRunQueueShare: 0.05, serverCoreOtherShare: 0.3 }),
      // Not pinned: only the run-queue wait is known.
      row('greedy', 2, 1, 1, 1, { serverRunQueueShare: 0.4, serverCoreOtherShare: null }),
    ];
    const md = serverContention(rows, false).join('\n');
    expect(md).toMatch(/^## Server core contended/);
    expect(md).not.toContain('server-only @ 1');
    expect(md).toContain('- dp @ 1 req/s: other work took 0.30 s per s of the core, the executor ran 50.0 % of it');
    expect(md).toContain('- greedy @ 2 req/s: waited 0.40 s per s, the executor ran 50.0 % of it');
    expect(serverContention([rows[0]], false)).toEqual([]);
  });

  it('flags a rate where the emulated devices ran late or the client core was busy', () => {
    const costs = [
      { stage: 0, prefillMsPerToken: 1, decodeMs: 2 },
      { stage: 1, prefillMsPerToken: 10, decodeMs: 10 },
    ];
    // Modelled client time of 'CS' on a 2x device: 2 × (1 × 4 prompt tokens + 2 × 2 decode steps) = 16 ms.
    const mk = (clientComputeMs: number): RequestRecord => rec({ placement: 'CS', promptTokens: 4, tokenMs: [1, 2, 3], endMs: 3, clientComputeMs });
    const ok = deviceSide([mk(16.5), mk(16)], costs, new Map([['d', 2]]), 0.5, 0.6, 1);
    expect(ok.timingErrorMs).toMatchObject({ n: 2, p50: 0.25 });
    expect(ok.limitedBy).toEqual([]);
    const late = deviceSide([mk(40), mk(40)], costs, new Map([['d', 2]]), 0.5, 0.95, 1);
    expect(late.timingErrorRel!.p99).toBeCloseTo(1.5, 9);
    expect(late.limitedBy.join(' ')).toMatch(/ran late: p99 timing error 24\.0 ms .* client core was 95 %/);
    // A phased generation ('prefill/decode'): the device prefills stage 0 and decodes both stages:
    // 2 × (1 × 4 + (2 + 10) × 2) = 56 ms.
    const phased = deviceSide(
      [rec({ placement: 'CS/CC', promptTokens: 4, tokenMs: [1, 2, 3], endMs: 3, clientComputeMs: 57 })],
      costs,
      new Map([['d', 2]]),
      0,
      0,
      1,
    );
    expect(phased.timingErrorMs).toMatchObject({ n: 1, p50: 1 });
  });
});

describe('prediction error', () => {
  /** A phone's chat request measured at 100 ms E2E (tokens at 40, 70, 100 ms) and predicted so; with `p` on top. */
  const predicted = (p: Partial<RequestRecord>): RequestRecord =>
    rec({ device: 'phone', requestClass: 'chat', tokenMs: [40, 70, 100], endMs: 100, predictedE2eMs: 100, predictedTtftMs: 40, predictedTpotMs: 30, ...p });
  /** n requests measured at 100 ms E2E (40 TTFT, 30 TPOT) with E2E predicted at e2e(i). */
  const group = (n: number, e2e: (i: number) => number, patch: Partial<RequestRecord> = {}): RequestRecord[] =>
    Array.from({ length: n }, (_, i) => predicted({ index: i, predictedE2eMs: e2e(i), ...patch }));

  it('gives median, p90 and signed median of the relative error per device / request class, and flags only judged groups over the target', () => {
    // 20 requests, E2E predicted 100 − i ms against 100 measured: errors 0, −1 %, …, −19 % (within the target).
    const low = group(20, (i) => 100 - i);
    // 19 requests 50 % off: below the ≥ 20 rule, so reported but not judged.
    const few = group(19, () => 150, { device: 'laptop' });
    // 20 requests with a median of 5 % but a p90 of 30 %: flagged on p90.
    const tail = group(20, (i) => (i < 15 ? 105 : 130), { requestClass: 'long' });
    const failed = predicted({ status: 'DEADLINE_EXCEEDED', predictedE2eMs: 1 });
    const g = predictionErrors(predictionSamples([...low, ...few, ...tail, failed]));
    expect(Object.keys(g)).toEqual(['laptop/chat', 'phone/chat', 'phone/long']);
    const e = g['phone/chat'].figures.e2e!;
    expect(e).toMatchObject({ n: 20, judged: true, flagged: false });
    expect(e.medianAbs).toBeCloseTo(0.095, 9);
    expect(e.p90Abs).toBeCloseTo(0.171, 9);
    expect(e.signedMedian).toBeCloseTo(-0.095, 9);
    expect(g['phone/chat']).toMatchObject({ completed: 20, predicted: 20, unpredicted: 0, flagged: false });
    // TTFT and TPOT as predicted exactly: judged, error 0, not flagged.
    expect(g['phone/chat'].figures.ttft).toMatchObject({ n: 20, medianAbs: 0, p90Abs: 0, flagged: false });
    expect(g['phone/chat'].figures.tpot).toMatchObject({ n: 20, medianAbs: 0, flagged: false });
    // Re-priced at the produced length: 40 + 2 × 30 = 100, exact.
    expect(g['phone/chat'].figures.e2eAtLength).toMatchObject({ n: 20, medianAbs: 0 });
    expect(g['laptop/chat']).toMatchObject({ completed: 19, flagged: null });
    expect(g['laptop/chat'].figures.e2e).toMatchObject({ n: 19, medianAbs: 0.5, signedMedian: 0.5, judged: false, flagged: null });
    expect(g['phone/long'].figures.e2e).toMatchObject({ medianAbs: 0.05, p90Abs: 0.3, signedMedian: 0.05, flagged: true });
    // Within the target: median 10 % and p90 25 % exactly are not over.
    const fine = predictionErrors(predictionSamples(group(20, (i) => (i < 10 ? 110 : i < 17 ? 90 : 125))))['phone/chat'];
    expect(fine.figures.e2e).toMatchObject({ medianAbs: 0.1, flagged: false });
    expect(fine.flagged).toBe(false);
  });

  it('counts requests without a prediction apart, and merges rates before judging', () => {
    const none = group(15, () => 0, { predictedE2eMs: undefined, predictedTtftMs: undefined, predictedTpotMs: undefined, planEpoch: 0 });
    const oneRate = predictionSamples([...none, ...group(12, () => 50)]);
    const g1 = predictionErrors(oneRate)['phone/chat'];
    expect(g1).toMatchObject({ completed: 27, predicted: 12, unpredicted: 15, flagged: null });
    expect(g1.figures.e2e).toMatchObject({ n: 12, judged: false });
    // Two rates of 12 predicted requests each: 24 ≥ 20, judged (and 50 % off: flagged, predicted too low).
    const merged = predictionErrors(mergeSamples([oneRate, predictionSamples(group(12, () => 50))]))['phone/chat'];
    expect(merged).toMatchObject({ completed: 39, predicted: 24, unpredicted: 15, flagged: true });
    expect(merged.figures.e2e).toMatchObject({ n: 24, medianAbs: 0.5, signedMedian: -0.5, judged: true });
    // A one-token request has no measured TPOT; a class predicting none leaves TPOT out.
    const one = predictionErrors(predictionSamples([predicted({ tokenMs: [40], endMs: 41, predictedTpotMs: undefined })]))['phone/chat'];
    expect(one.figures.tpot).toBeNull();
    expect(one.figures.e2eAtLength!.signedMedian).toBeCloseTo(40 / 41 - 1, 4);
  });

  it('gives the hindsight floor: the error of the measured median per group and placement, whatever was predicted', () => {
    // 20 requests on one placement measured at 80..118 ms: the median 99 ms is the best constant in hindsight.
    const spread = Array.from({ length: 20 }, (_, i) => predicted({ index: i, endMs: 80 + 2 * i, placement: 'SS', predictedE2eMs: 500 }));
    // 20 more on another placement at 50 ms exactly: their own median, error 0 (not mixed with the others).
    const flat = Array.from({ length: 20 }, (_, i) => predicted({ index: 20 + i, endMs: 50, placement: 'CC', predictedE2eMs: 500 }));
    const unpredicted = predicted({ endMs: 1000, placement: 'SS', predictedE2eMs: undefined, predictedTtftMs: undefined });
    const g = predictionErrors(predictionSamples([...spread, ...flat, unpredicted]))['phone/chat'];
    const expected = [...spread.map((r) => Math.abs(99 - r.endMs) / r.endMs), ...flat.map(() => 0)].sort((a, b) => a - b);
    expect(g.hindsight).toMatchObject({ n: 40, judged: true });
    expect(g.hindsight!.medianAbs).toBeCloseTo((expected[19]! + expected[20]!) / 2, 4);
    expect(g.hindsight!.p90Abs).toBeGreaterThan(0.1);
    // The floor is independent of the prediction, which is far off.
    expect(g.figures.e2e!.medianAbs).toBeGreaterThan(3);
  });

  it('predicts each request from the recent past: TTFT and token gaps seen on its placement in the window before it was sent', () => {
    const r0 = predicted({ index: 0, sentMs: 0, placement: 'SS', tokenMs: [40, 70, 100], endMs: 100 });
    // Sent 1 s later: the window saw r0's first token (TTFT 40) and its gaps (30, 30): predicts 40 + 2 × 30 = 100, as measured.
    const r1 = predicted({ index: 1, sentMs: 1000, placement: 'SS', tokenMs: [40, 70, 100], endMs: 100 });
    // Sent at 1.5 s and measured at 200: the window saw both (median TTFT 40, gaps 30): predicts 100, error −50 %.
    const r2 = predicted({ index: 2, sentMs: 1500, placement: 'SS', tokenMs: [80, 140, 200], endMs: 200 });
    // Another placement saw nothing before it: no recent prediction.
    const r3 = predicted({ index: 3, sentMs: 1600, placement: 'CC', tokenMs: [10, 20, 30], endMs: 30 });
    // Sent long after the others: its window is empty.
    const r4 = predicted({ index: 4, sentMs: 9000, placement: 'SS', tokenMs: [40, 70, 100], endMs: 100 });
    const samples = predictionSamples([r0, r1, r2, r3, r4])['phone/chat'];
    expect([...samples.recent].sort((a, b) => a - b)).toEqual([-0.5, 0]);
    expect(predictionErrors({ x: samples }).x.recent).toMatchObject({ n: 2, medianAbs: 0.25, judged: false });
    expect(mergeSamples([{ g: samples }, { g: samples }]).g.recent).toHaveLength(4);
  });

  it("corrects each plan's prediction as the planner's calibrator would have when the request was sent: from the outcomes ended by then", () => {
    const { minOutcomes } = DEFAULT_CALIBRATION;
    // One a second, each measured at twice its 100 ms prediction and ended before the next is sent:
    // the first minOutcomes keep the plan's −50 %; from then on the factor is 2 and the error 0.
    const steady = Array.from({ length: minOutcomes + 7 }, (_, i) => predicted({ index: i, sentMs: 1000 * i, endMs: 200, predictedE2eMs: 100 }));
    // Sent together, none ended before the others were sent: none is corrected.
    const burst = Array.from({ length: minOutcomes + 3 }, (_, i) => predicted({ index: i, device: 'laptop', sentMs: i, endMs: 200, predictedE2eMs: 100 }));
    const samples = predictionSamples([...steady, ...burst]);
    const corrected = [...samples['phone/chat'].calibrated!].sort((a, b) => a - b);
    expect(corrected.slice(0, minOutcomes)).toEqual(Array<number>(minOutcomes).fill(-0.5));
    expect(corrected.slice(minOutcomes)).toHaveLength(7);
    for (const e of corrected.slice(minOutcomes)) expect(e).toBeCloseTo(0, 9);
    expect(samples['laptop/chat'].calibrated).toEqual(Array<number>(minOutcomes + 3).fill(-0.5));
    const g = predictionErrors(samples)['phone/chat'];
    // The plan itself is off by 50 % on every request; corrected, only the first ones are.
    expect(g.figures.e2e).toMatchObject({ medianAbs: 0.5 });
    expect(g.calibrated).toMatchObject({ n: minOutcomes + 7, p90Abs: 0.5 });
    expect(g.calibrated!.medianAbs).toBeCloseTo(0, 9);
    expect(mergeSamples([samples, samples])['phone/chat'].calibrated).toHaveLength(2 * (minOutcomes + 7));
  });

  it('writes a Prediction error section per policy, with the flag and the too-few groups', () => {
    const md = predictionSection({ dp: predictionErrors(predictionSamples([...group(20, () => 150), ...group(3, () => 100, { device: 'laptop' })])) }).join(
      '\n',
    );
    expect(md).toContain('## Prediction error');
    expect(md).toMatch(/\| dp \| phone\/chat \| 20 \| 20 \| 0 \| 50\.0 % \/ 50\.0 % \(\+50\.0 %\) \*\*over\*\* \|/);
    expect(md).toContain('| dp | laptop/chat | 3 | 3 | 0 | too few (n 3) |');
    // The sustained-rate columns come from their own groups (here: none sustained for laptop).
    const sustained = { dp: predictionErrors(predictionSamples(group(20, () => 110))) };
    const md2 = predictionSection(
      { dp: predictionErrors(predictionSamples([...group(20, () => 150), ...group(3, () => 100, { device: 'laptop' })])) },
      sustained,
    ).join('\n');
    expect(md2).toMatch(/\| dp \| phone\/chat \|.* \| 10\.0 % \/ 10\.0 % \(\+10\.0 %\) \| 0\.0 % \/ 0\.0 % \(0\.0 %\) \| – \|$/m);
    expect(md2).toMatch(/\| dp \| laptop\/chat \|.* \| – \| – \| – \|$/m);
  });
});

describe('scenario files', () => {
  it('the shipped default scenario is valid and covers every policy input', () => {
    const s: Scenario = loadScenario();
    expect(s.preset).toBe('small');
    expect(s.rates.length).toBeGreaterThan(2);
    expect(s.quick.rates.length).toBeGreaterThan(0);
  });

  it('bundles default, mobile, edge, phased (TTFT/TPOT SLOs on every class) and gpt2, found by name', () => {
    for (const name of ['default', 'mobile', 'edge', 'phased', 'gpt2']) {
      expect(scenarioPathOf(name)).toBe((BUNDLED_SCENARIOS as Record<string, string>)[name]);
      const s = loadScenario(scenarioPathOf(name));
      expect(s.emulation).toBe('replay');
      if (name !== 'gpt2') for (const rc of s.requestClasses) expect([rc.ttftMs, rc.tpotMs].every((x) => x! > 0)).toBe(true);
    }
    const edge = loadScenario(scenarioPathOf('edge'));
    expect(edge.deviceClasses.every((d) => d.slowdown >= 2 && d.slowdown <= 4 && 2 * d.link.latencyMs >= 1 && 2 * d.link.latencyMs <= 3)).toBe(true);
    const mobile = loadScenario(scenarioPathOf('mobile'));
    expect(mobile.deviceClasses.every((d) => 2 * d.link.latencyMs >= 30 && 2 * d.link.latencyMs <= 60)).toBe(true);
    // phased: long prompts within the small preset's 1024 positions, output included.
    const phased = loadScenario(scenarioPathOf('phased'));
    expect(phased.requestClasses.every((rc) => rc.promptTokens.max + rc.outputTokens.max <= 1024)).toBe(true);
    expect(Math.max(...phased.requestClasses.map((rc) => rc.promptTokens.max))).toBeGreaterThanOrEqual(512);
    expect(scenarioPathOf('./mine.json')).toBe('./mine.json');
  });

  it('scales every SLO, of the classes and the overrides, by the recorded speed against the stated reference', () => {
    const s = validateScenario(scenario({ sloReferenceTokenMs: 4, slaOverrides: { fast: { short: 90, long: { ttftMs: 50, tpotMs: 20 } } } }));
    expect(sloScale(s, 6)).toBe(1.5);
    expect(sloScale(s, undefined)).toBe(1);
    expect(sloScale(validateScenario(scenario()), 6)).toBe(1);
    const x = scaleSlos(s, 1.5);
    expect(x.requestClasses.map((r) => [r.ttftMs, r.tpotMs, r.e2eMs])).toEqual([
      [150, 60, 225],
      [undefined, undefined, 300],
    ]);
    expect(x.slaOverrides).toEqual({ fast: { short: { e2eMs: 135 }, long: { ttftMs: 75, tpotMs: 30 } } });
    // What the planner is told and what a request is judged by both follow.
    expect(JSON.parse(plannerSloEnv(x).PLANNER_REQUEST_CLASSES)[0]).toMatchObject({ ttftMs: 150, tpotMs: 60, slaMs: 225 });
    expect(requestSlo(x, 'fast', 'long')).toEqual({ e2eMs: 300, ttftMs: 75, tpotMs: 30 });
    expect(scaleSlos(s, 1)).toBe(s);
    expect(() => scaleSlos(s, 0)).toThrow('scaleSlos: factor must be a finite number > 0, given 0');
    // edge and phased state theirs for a reference machine.
    expect(loadScenario(scenarioPathOf('edge')).sloReferenceTokenMs).toBe(4.8);
    expect(loadScenario(scenarioPathOf('mobile')).sloReferenceTokenMs).toBeUndefined();
  });

  it('gives the planner only the SLOs stated, and an override as a number when it states only slaMs', () => {
    const s = validateScenario(scenario({ slaOverrides: { fast: { short: 90, long: { ttftMs: 50, tpotMs: 20 } } } }));
    const env = plannerSloEnv(s);
    expect(JSON.parse(env.PLANNER_REQUEST_CLASSES)).toEqual([
      { name: 'short', maxPromptTokens: 8, expectedNewTokens: 3, ttftMs: 100, tpotMs: 40, slaMs: 150 },
      { name: 'long', maxPromptTokens: 16, expectedNewTokens: 3, slaMs: 200 },
    ]);
    expect(JSON.parse(env.PLANNER_SLA_OVERRIDES)).toEqual({ fast: { short: 90, long: { ttftMs: 50, tpotMs: 20 } } });
  });
});
