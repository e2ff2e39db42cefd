import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTempModel, startNatsServer, type NatsServerHandle, type TempModel } from '@tandem/testkit';
import { arrivalTimes, buildTrace, Rng } from '../src/loadtest/arrivals';
import { summarize, type RequestRecord } from '../src/loadtest/metrics';
import { compare, summarizePolicy } from '../src/loadtest/report';
import { loadScenario, validateScenario, type Scenario } from '../src/loadtest/scenario';
import { run } from './run-cli';


let dir: string;
beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'tandem-loadtest-test-')); });
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A small valid scenario; `patch` replaces top-level fields. */
function scenario(patch: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    seed: 5,
    preset: 'tiny',
    deviceClasses: [
      { name: 'fast', weight: 1, slowdown: 50, link: { latencyMs: 0 } },
      { name: 'slow', weight: 1, slowdown: 50, link: { latencyMs: 1, upBytesPerMs: 100_000, downBytesPerMs: 100_000 } },
    ],
    requestClasses: [
      { name: 'short', weight: 1, promptTokens: { min: 4, max: 8 }, outputTokens: { min: 3, max: 3 }, slaMs: 150 },
      { name: 'long', weight: 1, promptTokens: { min: 9, max: 16 }, outputTokens: { min: 2, max: 4 }, slaMs: 200 },
    ],
    arrival: { process: 'poisson' },
    rates: [3],
    durationS: 2,
    warmupS: 0.3,
    requestTimeoutMs: 15_000,
    ...patch,
  };
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
function gapsOf(times: number[]): number[] { return times.map((t, i) => t - (i ? times[i - 1] : 0)); }
function cvOf(xs: number[]): number {
  const m = mean(xs);
  return Math.sqrt(mean(xs.map((x) => (x - m) ** 2))) / m;
}

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
      expect(r.slaMs).toBe(cls.slaMs);
    }
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
  const rec = (p: Partial<RequestRecord>): RequestRecord => ({
    index: 0, device: 'd', requestClass: 'c', promptTokens: 4, maxNewTokens: 3, slaMs: 300, sentMs: 0, lagMs: 0,
    status: 'OK', tokenMs: [], endMs: 0, ...p,
  });

  it('computes TTFT, TPOT, ITL, E2E, goodput and SLA attainment as benchmark_serving does, counting failures', () => {
    const records = [
      rec({ index: 0, sentMs: 0, tokenMs: [100, 150, 210], endMs: 210, slaMs: 300, serverComputeMs: 20, placement: 'SS' }),
      rec({ index: 1, sentMs: 500, tokenMs: [200, 300], endMs: 300, slaMs: 250, serverComputeMs: 10, placement: 'CS' }),
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

  it('an empty or all-failed run gives zero goodput and null percentiles, not NaN', () => {
    const st = summarize([rec({ status: 'RESOURCE_EXHAUSTED', endMs: 3 })], 1);
    expect(st.goodput).toBe(0);
    expect(st.slaAttainment).toBe(0);
    expect(st.ttftMs.p50).toBeNull();
    expect(JSON.stringify(st)).not.toContain('NaN');
  });

  it('compares policies: CPU cut against server-only and goodput gain over greedy', () => {
    const row = (policy: 'server-only' | 'greedy' | 'dp', rate: number, cpu: number, goodput: number, att: number) => ({
      policy, rate, serverCpuS: cpu, serverCpuPerRequestS: cpu / 10, serverCpuUtilisation: 0.5, reportedServerComputeS: cpu / 2, agentsCpuS: 0, plans: {},
      stats: { ...summarize([], 1), requests: 10, completed: 10, metSla: Math.round(att * 10), goodput, slaAttainment: att },
    });
    const rows = [row('server-only', 1, 3, 1, 1), row('server-only', 2, 3, 1.5, 0.8), row('greedy', 1, 2.4, 1, 1), row('greedy', 2, 2.4, 1.6, 0.85), row('dp', 1, 1.8, 1, 1), row('dp', 2, 1.8, 2, 0.95)];
    const sums = (['server-only', 'greedy', 'dp'] as const).map((p) => summarizePolicy(p, rows, 0.9));
    expect(sums.map((s) => s.maxRateMeetingSla)).toEqual([1, 1, 2]);
    const c = compare(sums);
    expect(c.dpCpuReductionVsServerOnly).toBeCloseTo(0.4, 9);
    expect(c.dpGoodputGainVsGreedy).toBeCloseTo(0.25, 9);
    expect(c.targets).toEqual({ cpuCutAtLeastOneThird: true, goodputGainAtLeast19Percent: true });
  });
});

describe('scenario files', () => {
  it('the shipped default scenario is valid and covers every policy input', () => {
    const s: Scenario = loadScenario();
    expect(s.preset).toBe('small');
    expect(s.rates.length).toBeGreaterThan(2);
    expect(s.quick.rates.length).toBeGreaterThan(0);
  });

  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['missing rates', { rates: undefined }, /scenario rates must be a non-empty array/],
    ['a slowdown below 1', { deviceClasses: [{ name: 'x', slowdown: 0.5 }] }, /scenario deviceClasses\[0\]\.slowdown must be a number >= 1 .*given 0\.5/],
    ['a bad arrival process', { arrival: { process: 'uniform' } }, /scenario arrival\.process must be 'poisson' or 'gamma', given "uniform"/],
    ['a gamma without cv', { arrival: { process: 'gamma' } }, /scenario arrival\.cv must be a number > 0/],
    ['overlapping prompt ranges', { requestClasses: [{ name: 'a', promptTokens: { min: 1, max: 10 }, outputTokens: { min: 1, max: 1 }, slaMs: 100 }, { name: 'b', promptTokens: { min: 10, max: 20 }, outputTokens: { min: 1, max: 1 }, slaMs: 100 }] }, /scenario requestClasses\[1\]\.promptTokens must not overlap/],
    ['an unknown field', { rate: 3 }, /scenario rate must be one of the known fields/],
    ['an SLA override for an unknown class', { slaOverrides: { fast: { huge: 10 } } }, /scenario slaOverrides\.fast\.huge must name a request class/],
    ['a negative SLA', { requestClasses: [{ name: 'a', promptTokens: { min: 1, max: 10 }, outputTokens: { min: 1, max: 1 }, slaMs: -1 }] }, /scenario requestClasses\[0\]\.slaMs must be a number > 0/],
  ];
  it.each(cases)('exits 2 naming the field for %s', async (_what, patch, message) => {
    const f = join(dir, `bad-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(f, JSON.stringify(scenario(patch)));
    const r = await run(['loadtest', '--scenario', f, '--out', join(dir, 'never')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('exits 2 for an unreadable or non-JSON file and for bad flags', async () => {
    const notJson = join(dir, 'not.json');
    writeFileSync(notJson, '{ nope');
    expect((await run(['loadtest', '--scenario', join(dir, 'missing.json')])).stderr).toMatch(/--scenario must name a readable file/);
    expect((await run(['loadtest', '--scenario', notJson])).code).toBe(2);
    const p = await run(['loadtest', '--policies', 'dp,magic']);
    expect(p.code).toBe(2);
    expect(p.stderr).toMatch(/--policies must list distinct names from server-only, greedy, prefix, dp, given 'dp,magic'/);
    expect((await run(['loadtest', '--rates', '2,-1'])).stderr).toMatch(/--rates must be a comma-separated list/);
    expect((await run(['loadtest', '--duration-s', '0'])).code).toBe(2);
  });
});

describe('tandem loadtest end to end (tiny model, real services)', () => {
  let nats: NatsServerHandle;
  let model: TempModel;
  beforeAll(async () => {
    nats = await startNatsServer();
    model = await makeTempModel();
  });
  afterAll(async () => {
    await nats?.stop();
    model?.remove();
  });

  it('runs every policy on the same trace and reports completed requests and server CPU for each', async () => {
    const f = join(dir, 'smoke.json');
    writeFileSync(f, JSON.stringify(scenario()));
    const out = join(dir, 'smoke-out');
    const r = await run(['loadtest', '--scenario', f, '--model-dir', model.dir, '--nats', nats.url, '--out', out, '--json']);
    if (r.code !== 0) throw new Error(r.stderr);
    const json = JSON.parse(r.stdout);
    expect(json).toEqual(JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')));
    expect(readFileSync(join(out, 'results.md'), 'utf8')).toContain('| policy |');
    expect(readFileSync(join(out, 'goodput.svg'), 'utf8')).toMatch(/^<svg/);
    expect(json.runs.map((x: { policy: string }) => x.policy)).toEqual(['server-only', 'greedy', 'prefix', 'dp']);
    const sent = json.runs.map((x: { stats: { requests: number } }) => x.stats.requests);
    expect(new Set(sent).size).toBe(1);
    for (const run of json.runs) {
      expect(run.stats.completed).toBeGreaterThan(0);
      expect(run.stats.completed + run.stats.failed).toBe(run.stats.requests);
      expect(run.serverCpuS).toBeGreaterThan(0);
    }
    expect(r.stderr).toMatch(/loadtest: .*100%/);
  }, 85_000);
});
