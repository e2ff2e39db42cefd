import { SLO_KEYS } from '@tandem/dp';
import { DEFAULT_CALIBRATION } from '@tandem/planner';
import { renderChart } from '@tandem/plot';
import { median } from '@tandem/util';
import type { Attainment } from './metrics';
import { LONG_GC_PAUSE_S, type ThreadPauses } from './gc-pauses';
import { mergeSamples, PREDICTION_LIMITS, predictionErrors, RECENT_WINDOW_MS, type ErrorStats, type PredictionGroup } from './prediction';
import { DEVICE_LIMITS, SERVER_CONTENDED, recordedTokenMs, type LoadtestOptions, type LoadtestRun, type RateResult } from './run';
import { sloScale, type Policy } from './scenario';

/** What one policy achieved over the whole sweep. */
export interface PolicySummary {
  readonly policy: Policy;
  /** Executor CPU over every rate divided by every completed request, s. */
  readonly serverCpuPerRequestS: number | null;
  /** The same from the server compute the agents reported, s. */
  readonly reportedServerComputePerRequestS: number | null;
  readonly requests: number;
  readonly completed: number;
  readonly failed: number;
  readonly failures: Readonly<Record<string, number>>;
  /** Requests within SLA over all requests of the sweep. */
  readonly slaAttainment: number;
  /** Highest goodput over the rates, requests/s, and where. */
  readonly peakGoodput: number;
  readonly peakGoodputRate: number | null;
  /** Highest swept rate at which at least slaTarget of the requests met their SLA (null: none). */
  readonly maxRateMeetingSla: number | null;
}

export interface Comparison {
  /** 1 − dp / server-only in server CPU per request (paper: about 1/3). */
  readonly dpCpuReductionVsServerOnly: number | null;
  readonly greedyCpuReductionVsServerOnly: number | null;
  readonly prefixCpuReductionVsServerOnly: number | null;
  /** dp's peak goodput over greedy's, − 1 (paper: 19 %). */
  readonly dpGoodputGainVsGreedy: number | null;
  /** dp's highest sustained rate over greedy's, − 1. */
  readonly dpMaxRateGainVsGreedy: number | null;
  readonly targets: { readonly cpuCutAtLeastOneThird: boolean | null; readonly goodputGainAtLeast19Percent: boolean | null };
}

export interface LoadtestReport {
  readonly json: unknown;
  readonly markdown: string;
  readonly svg: string;
}

export function summarizePolicy(policy: Policy, rows: readonly RateResult[], slaTarget: number): PolicySummary {
  const mine = rows.filter((r) => r.policy === policy).sort((a, b) => a.rate - b.rate);
  const completed = mine.reduce((a, r) => a + r.stats.completed, 0);
  const requests = mine.reduce((a, r) => a + r.stats.requests, 0);
  const cpu = mine.reduce((a, r) => a + r.serverCpuS, 0);
  const reported = mine.reduce((a, r) => a + r.reportedServerComputeS, 0);
  const failures: Record<string, number> = {};
  for (const r of mine) for (const [k, v] of Object.entries(r.stats.failures)) failures[k] = (failures[k] ?? 0) + v;
  let peak: RateResult | undefined;
  for (const r of mine) if (!peak || r.stats.goodput > peak.stats.goodput) peak = r;
  const ok = mine.filter((r) => r.stats.slaAttainment >= slaTarget);
  return {
    policy,
    serverCpuPerRequestS: completed ? cpu / completed : null,
    reportedServerComputePerRequestS: completed ? reported / completed : null,
    requests,
    completed,
    failed: requests - completed,
    failures,
    slaAttainment: requests ? mine.reduce((a, r) => a + r.stats.metSla, 0) / requests : 0,
    peakGoodput: peak?.stats.goodput ?? 0,
    peakGoodputRate: peak?.rate ?? null,
    maxRateMeetingSla: ok.length ? Math.max(...ok.map((r) => r.rate)) : null,
  };
}

const ratio = (a: number | null | undefined, b: number | null | undefined): number | null => (a != null && b != null && b > 0 ? a / b : null);

export function compare(sums: readonly PolicySummary[]): Comparison {
  const by = (p: Policy): PolicySummary | undefined => sums.find((s) => s.policy === p);
  const cut = (p: Policy): number | null => {
    const r = ratio(by(p)?.serverCpuPerRequestS, by('server-only')?.serverCpuPerRequestS);
    return r === null ? null : 1 - r;
  };
  const gain = (a: number | null | undefined, b: number | null | undefined): number | null => {
    const r = ratio(a, b);
    return r === null ? null : r - 1;
  };
  const dpCut = cut('dp');
  const dpGain = gain(by('dp')?.peakGoodput, by('greedy')?.peakGoodput);
  return {
    dpCpuReductionVsServerOnly: dpCut,
    greedyCpuReductionVsServerOnly: cut('greedy'),
    prefixCpuReductionVsServerOnly: cut('prefix'),
    dpGoodputGainVsGreedy: dpGain,
    dpMaxRateGainVsGreedy: gain(by('dp')?.maxRateMeetingSla, by('greedy')?.maxRateMeetingSla),
    targets: { cpuCutAtLeastOneThird: dpCut === null ? null : dpCut >= 1 / 3 - 1e-9, goodputGainAtLeast19Percent: dpGain === null ? null : dpGain >= 0.19 },
  };
}

/** The spread of one figure over repeats. */
export interface Spread {
  readonly n: number;
  readonly values: readonly number[];
  readonly min: number;
  readonly median: number;
  readonly max: number;
  readonly mean: number;
  /** Sample standard deviation (0 for one value). */
  readonly sd: number;
  /** With two or more values: whether the range straddles 1, i.e. the ratio is not distinguishable from no difference. */
  readonly withinNoise: boolean | null;
}

/** Spread of ratios (null values, e.g. a zero denominator, are left out); null when none is left. */
export function spreadOf(values: readonly (number | null)[]): Spread | null {
  const v = values.filter((x): x is number => x !== null && Number.isFinite(x));
  if (v.length === 0) return null;
  const s = [...v].sort((a, b) => a - b);
  const mean = v.reduce((a, b) => a + b, 0) / v.length;
  const sd = v.length > 1 ? Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / (v.length - 1)) : 0;
  return {
    n: v.length,
    values: v,
    min: s[0],
    median: median(s),
    max: s[s.length - 1],
    mean,
    sd,
    withinNoise: v.length > 1 ? s[0] <= 1 && s[s.length - 1] >= 1 : null,
  };
}

/** A planner policy (dp or dp-phased) against one baseline policy: each ratio per repeat, with its spread. */
export interface RatioSet {
  /** The policy measured: dp, or dp-phased. */
  readonly of: Policy;
  readonly against: Policy;
  /** Peak goodput of `of` over the baseline's. */
  readonly peakGoodput: Spread | null;
  /** Server CPU per request over the whole sweep, `of` over the baseline. */
  readonly cpuPerRequest: Spread | null;
  /** Per rate: goodput and server CPU per request, `of` over the baseline. */
  readonly byRate: readonly {
    readonly rate: number;
    readonly goodput: Spread | null;
    readonly cpuPerRequest: Spread | null;
    /**
     * Every request of both policies at this rate met its SLOs, in every repeat. Goodput (vLLM's)
     * divides by the time to the last answer, so the ratio then compares only how late each
     * policy's last request ended after the arrivals stopped.
     */
    readonly allGood: boolean;
  }[];
}

/** Each planner policy and what it is compared with, when both are in the run. */
const COMPARISONS: readonly (readonly [Policy, readonly Policy[]])[] = [
  ['dp', ['server-only', 'greedy', 'greedy-ratio']],
  ['dp-phased', ['server-only', 'dp', 'greedy-ratio']],
];

/**
 * dp's ratios against server-only, greedy and greedy-ratio, and dp-phased's against
 * server-only, dp and greedy-ratio (those in the run), per repeat (rows of one repeat
 * compared with each other).
 */
export function ratios(rows: readonly RateResult[], rates: readonly number[], slaTarget: number): RatioSet[] {
  const repeats = [...new Set(rows.map((r) => r.repeat))].sort((a, b) => a - b);
  /** Each repeat's rows (a whole sweep), in repeat order. */
  const byRepeat = repeats.map((k) => rows.filter((r) => r.repeat === k));
  const out: RatioSet[] = [];
  for (const [of, baselines] of COMPARISONS) {
    for (const against of baselines) {
      if (!rows.some((r) => r.policy === against) || !rows.some((r) => r.policy === of)) continue;
      const per = (f: (mine: readonly RateResult[]) => number | null): number[] => byRepeat.map(f).filter((x): x is number => x !== null);
      const sums = (mine: readonly RateResult[], p: Policy): PolicySummary => summarizePolicy(p, mine, slaTarget);
      out.push({
        of,
        against,
        peakGoodput: spreadOf(per((m) => ratio(sums(m, of).peakGoodput, sums(m, against).peakGoodput))),
        cpuPerRequest: spreadOf(per((m) => ratio(sums(m, of).serverCpuPerRequestS, sums(m, against).serverCpuPerRequestS))),
        byRate: rates.map((rate) => {
          const at = (m: readonly RateResult[], p: Policy): RateResult | undefined => m.find((r) => r.policy === p && r.rate === rate);
          return {
            rate,
            goodput: spreadOf(per((m) => ratio(at(m, of)?.stats.goodput, at(m, against)?.stats.goodput))),
            cpuPerRequest: spreadOf(per((m) => ratio(at(m, of)?.serverCpuPerRequestS, at(m, against)?.serverCpuPerRequestS))),
            allGood: byRepeat.every((m) =>
              [of, against].every((p) => {
                const st = at(m, p)?.stats;
                return st !== undefined && st.requests > 0 && st.metSla === st.requests;
              }),
            ),
          };
        }),
      });
    }
  }
  return out;
}

/** A ratio with two decimals, or two significant digits below 0.1 (so 0.0027 does not read 0.00). */
const r2 = (v: number): string => (v !== 0 && Math.abs(v) < 0.1 ? v.toPrecision(2) : v.toFixed(2));

const spreadCell = (x: Spread | null, repeats: number): string => {
  if (!x) return '–';
  if (x.n === 1) return `${r2(x.median)} (one repeat${repeats > 1 ? ` of ${repeats}; – in the others` : ''})`;
  return `${r2(x.median)} [${r2(x.min)}–${r2(x.max)}], ${r2(x.mean)} ± ${r2(x.sd)}${x.withinNoise ? ' — within noise' : ''}`;
};

const fx = (v: number | null | undefined, d = 1): string => (v == null || !Number.isFinite(v) ? '–' : v.toFixed(d));
const pct = (v: number | null | undefined): string => (v == null || !Number.isFinite(v) ? '–' : `${(v * 100).toFixed(1)} %`);
const msCell = (v: number | null | undefined): string => (v == null ? '–' : Math.abs(v) >= 10 ? v.toFixed(0) : v.toFixed(1));

/** What the report says about the run besides its rows: the options it ran with and what it found. */
export interface ReportContext
  extends Pick<LoadtestOptions, 'scenario' | 'policies' | 'rates' | 'durationS' | 'seed' | 'modelDir'>, Omit<LoadtestRun, 'results' | 'executors'> {
  /** Executors per stack (default 1: the report says nothing of executors). */
  readonly executors?: number;
  readonly scenarioPath: string;
  readonly repeats: number;
  readonly quick: boolean;
  readonly elapsedS: number;
}

/** results.json, results.md and goodput.svg of a load test. */
export function buildReport(rows: readonly RateResult[], ctx: ReportContext): LoadtestReport {
  const s = ctx.scenario;
  const nExec = ctx.executors ?? 1;
  const repeats = [...new Set(rows.map((r) => r.repeat))].sort((a, b) => a - b);
  const multi = repeats.length > 1;
  // Summaries per repeat (each repeat is a whole sweep); the comparison uses the first.
  const sumsByRepeat = repeats.map((k) => ({
    repeat: k,
    sums: ctx.policies.map((p) =>
      summarizePolicy(
        p,
        rows.filter((r) => r.repeat === k),
        s.slaTarget,
      ),
    ),
  }));
  const sums = sumsByRepeat[0]?.sums ?? ctx.policies.map((p) => summarizePolicy(p, [], s.slaTarget));
  const cmp = compare(sums);
  const rat = ratios(rows, ctx.rates, s.slaTarget);
  const md: string[] = [];
  md.push('# tandem loadtest', '');
  md.push(
    `Scenario: ${ctx.scenarioPath}${s.description ? ` — ${s.description}` : ''}. Model preset \`${s.preset}\` (${ctx.stageCount} stages), ` +
      `${s.arrival.process === 'gamma' ? `gamma arrivals (cv ${s.arrival.cv})` : 'Poisson arrivals'}, ${ctx.durationS} s per rate, seed ${ctx.seed}${ctx.quick ? ', --quick' : ''}. ` +
      (nExec > 1
        ? `${nExec} executors (1 thread each) ${ctx.pinned ? 'sharing CPU 0, agents, planner and harness on CPU 1' : 'NOT pinned'}; the agents' fallback is the first. `
        : `Executor ${ctx.pinned ? 'pinned to CPU 0 (1 thread), agents, planner and harness to CPU 1' : 'NOT pinned'}. `) +
      `${multi ? `${repeats.length} repeats (arrival seeds ${ctx.seed}…${ctx.seed + repeats.length - 1}, fresh services each). ` : ''}Run took ${ctx.elapsedS.toFixed(0)} s.`,
    '',
  );
  for (const w of ctx.warnings) md.push(`> warning: ${w}`, '');
  md.push('## What is modelled', '');
  /** A whole token on the device as recorded (uncontended), ms. */
  const tokenMs = ctx.recording ? recordedTokenMs(ctx.recording.costs) : 0;
  const scale = sloScale(s, ctx.recording ? tokenMs : undefined);
  md.push(
    'The server side is real: the executor runs every server stage on its own core, and the values it receives are real stage outputs. ' +
      'Links are emulated by the agents (one-way latency plus bytes / throughput per transfer). ' +
      (ctx.recording
        ? `Devices are emulated by replay: their stage outputs come from a recording of a one-process run of the model over each request class's prompt pool ` +
          `(${ctx.recording.prompts} prompts, ${(ctx.recording.bytes / 1e6).toFixed(1)} MB, ${ctx.recording.reused ? `made by an earlier run: ${ctx.recording.file}` : `recorded in ${ctx.recording.recordS.toFixed(1)} s`}), keyed by the whole token history; ` +
          "each replayed stage sleeps its recorded uncontended cost × the device class's slow-down, which is also the profile the agent publishes to the planner " +
          `(a whole token on the device: ${fx(tokenMs, 2)} ms recorded, so ${s.deviceClasses.map((d) => `${d.name} ${fx(d.slowdown * tokenMs, 1)} ms`).join(', ')}). ` +
          (scale !== 1
            ? `The scenario states its SLOs for a whole token of ${s.sloReferenceTokenMs} ms (sloReferenceTokenMs), so every SLO of this run is the stated one × ${fx(scale, 3)}. `
            : '') +
          'The device side below shows what that cost the client core and how far the emulated times strayed from the modelled ones.'
        : 'Devices compute their stages for real on the shared client core, padded to slow-down × their uncontended cost: their timing depends on each other under load.'),
    '',
  );
  md.push('## Per policy', '');
  md.push(
    `| ${multi ? 'repeat | ' : ''}policy | server CPU-s / request | reported server compute-s / request | peak goodput (req/s) @ rate | max rate with ≥ ${(s.slaTarget * 100).toFixed(0)} % good | good (all stated SLOs, all rates) | requests | failed |`,
  );
  md.push(`|${multi ? '---:|' : ''}---|---:|---:|---:|---:|---:|---:|---:|`);
  for (const { repeat, sums: rs } of sumsByRepeat) {
    for (const p of rs) {
      md.push(
        `| ${multi ? `${repeat + 1} | ` : ''}${p.policy} | ${fx(p.serverCpuPerRequestS, 4)} | ${fx(p.reportedServerComputePerRequestS, 4)} | ${fx(p.peakGoodput, 2)} @ ${p.peakGoodputRate ?? '–'} | ${p.maxRateMeetingSla ?? 'none'} | ${pct(p.slaAttainment)} | ${p.requests} | ${p.failed}${
          p.failed
            ? ` (${Object.entries(p.failures)
                .map(([k, v]) => `${k} ${v}`)
                .join(', ')})`
            : ''
        } |`,
      );
    }
  }
  md.push('');
  if (rat.length) {
    md.push('## The planner against the baselines, with spread', '');
    md.push(
      multi
        ? `Ratios policy / baseline per repeat: median [min–max], mean ± sd over ${repeats.length} repeats. "within noise": the range straddles 1, so the repeats do not show a difference. – where the baseline's figure is 0 in a repeat.`
        : 'Ratios policy / baseline from one repeat: no spread; run with `--repeats N` to tell an effect from noise.',
      '',
      '"(all good)": every request of both policies met its SLOs at that rate (in every repeat). Goodput, as vLLM defines it, divides by the time to the last answer, so such a ratio only says how late each policy\'s last request ended after the arrivals stopped (a request run on a slow device ends later, within its SLOs).',
      '',
    );
    md.push('| policy | against | figure | ' + ['all rates', ...ctx.rates.map((r) => `${r} req/s`)].join(' | ') + ' |');
    md.push('|---|---|---|' + ['', ...ctx.rates].map(() => '---').join('|') + '|');
    for (const r of rat) {
      md.push(
        `| ${r.of} | ${r.against} | goodput (peak, then per rate) | ${spreadCell(r.peakGoodput, repeats.length)} | ${r.byRate.map((b) => spreadCell(b.goodput, repeats.length) + (b.allGood ? ' (all good)' : '')).join(' | ')} |`,
      );
      md.push(
        `| ${r.of} | ${r.against} | server CPU / request | ${spreadCell(r.cpuPerRequest, repeats.length)} | ${r.byRate.map((b) => spreadCell(b.cpuPerRequest, repeats.length)).join(' | ')} |`,
      );
    }
    md.push('');
  }
  md.push(`## Against the paper${multi ? ' (first repeat)' : ''}`, '');
  md.push(`| claim | paper | measured | met |`);
  md.push('|---|---:|---:|---|');
  md.push(
    `| server work cut, dp vs server-only | ≈ 33 % | ${pct(cmp.dpCpuReductionVsServerOnly)} | ${cmp.targets.cpuCutAtLeastOneThird === null ? '–' : cmp.targets.cpuCutAtLeastOneThird ? 'yes' : 'no'} |`,
  );
  md.push(
    `| goodput gain, dp vs greedy (peak) | ≈ 19 % | ${pct(cmp.dpGoodputGainVsGreedy)} | ${cmp.targets.goodputGainAtLeast19Percent === null ? '–' : cmp.targets.goodputGainAtLeast19Percent ? 'yes' : 'no'} |`,
  );
  md.push(`| max sustained rate gain, dp vs greedy | – | ${pct(cmp.dpMaxRateGainVsGreedy)} | |`);
  md.push(
    `| server work cut, greedy / prefix vs server-only | – | ${pct(cmp.greedyCpuReductionVsServerOnly)} / ${pct(cmp.prefixCpuReductionVsServerOnly)} | |`,
  );
  md.push('');
  md.push('## Per policy and rate', '');
  md.push('Latencies in ms over completed requests (vLLM benchmark_serving definitions); failed and timed-out requests count as SLA misses.', '');
  md.push(
    `| ${multi ? 'repeat | ' : ''}policy | rate | sent | done | failed | req/s | tok/s | goodput | good | server CPU-s/req | server CPU util | TTFT p50/p90/p99 | TPOT p50/p90/p99 | ITL p50/p90/p99 | E2E p50/p90/p99 |`,
  );
  md.push(`|${multi ? '---:|' : ''}---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|`);
  const d3 = (d: { p50: number | null; p90: number | null; p99: number | null }): string => `${msCell(d.p50)} / ${msCell(d.p90)} / ${msCell(d.p99)}`;
  for (const r of rows) {
    const st = r.stats;
    md.push(
      `| ${multi ? `${r.repeat + 1} | ` : ''}${r.policy} | ${r.rate} | ${st.requests} | ${st.completed} | ${st.failed} | ${fx(st.requestThroughput, 2)} | ${fx(st.outputTokenThroughput, 0)} | ${fx(st.goodput, 2)} | ${pct(st.slaAttainment)} | ${fx(r.serverCpuPerRequestS, 4)} | ${pct(r.serverCpuUtilisation)} | ${d3(st.ttftMs)} | ${d3(st.tpotMs)} | ${d3(st.itlMs)} | ${d3(st.e2eMs)} |`,
    );
  }
  md.push('');
  if (nExec > 1) md.push(...executorSection(rows, multi));
  md.push(...serverContention(rows, multi));
  md.push(...gcSection(rows, multi));
  md.push('## Device side', '');
  md.push(
    `Agents' CPU (from /proc) and the client core's (agents, planner and this harness) as a share of one core; timing error = the client compute an agent measured minus the modelled one, per request with local stages (ms, and relative). ` +
      `A rate is flagged when the device side, not the server, may have limited it: timing error p99 above ${DEVICE_LIMITS.timingErrorP99Ms} ms and ${(DEVICE_LIMITS.timingErrorP99Rel * 100).toFixed(0)} %, the client core above ${(DEVICE_LIMITS.clientCoreUtilisation * 100).toFixed(0)} %, or replay misses.`,
    '',
  );
  md.push(
    `| ${multi ? 'repeat | ' : ''}policy | rate | agents CPU | client core | timing error p50 / p99 (ms) | relative p50 / p99 | replay misses | device-limited |`,
  );
  md.push(`|${multi ? '---:|' : ''}---|---:|---:|---:|---:|---:|---:|---|`);
  for (const r of rows) {
    const d = r.deviceSide;
    md.push(
      `| ${multi ? `${r.repeat + 1} | ` : ''}${r.policy} | ${r.rate} | ${pct(d.agentsCpuUtilisation)} | ${pct(d.clientCoreUtilisation)} | ${d.timingErrorMs ? `${fx(d.timingErrorMs.p50, 1)} / ${fx(d.timingErrorMs.p99, 1)}` : '–'} | ${d.timingErrorRel ? `${pct(d.timingErrorRel.p50)} / ${pct(d.timingErrorRel.p99)}` : '–'} | ${d.replayMisses} | ${d.limitedBy.length ? `**yes**: ${d.limitedBy.join('; ')}` : 'no'} |`,
    );
  }
  md.push('');
  const failedRows = rows.filter((r) => r.stats.failed > 0);
  if (failedRows.length) {
    md.push('## Failed requests', '');
    for (const r of failedRows)
      md.push(
        `- ${multi ? `repeat ${r.repeat + 1}, ` : ''}${r.policy} @ ${r.rate} req/s: ${Object.entries(r.stats.failures)
          .map(([k, v]) => `${v} × ${k}`)
          .join(', ')}`,
      );
    md.push('');
  }
  md.push('## SLO attainment (all rates and repeats)', '');
  const stated = SLO_KEYS.filter(
    (k) => s.requestClasses.some((c) => c[k] !== undefined) || Object.values(s.slaOverrides).some((row) => Object.values(row).some((o) => o[k] !== undefined)),
  );
  md.push(
    `Good = completed within every stated SLO (${stated.map((k) => ({ ttftMs: 'TTFT', tpotMs: 'TPOT', e2eMs: 'E2E' })[k]).join(', ')}); each SLO's attainment over the requests that state it. SLOs per device/class, ms: ` +
      [
        ...new Set(
          rows.flatMap((r) =>
            Object.entries(r.stats.byClass).map(
              ([k, v]) =>
                `${k} ${SLO_KEYS.filter((x) => v.slo[x] !== undefined)
                  .map((x) => `${{ ttftMs: 'TTFT', tpotMs: 'TPOT', e2eMs: 'E2E' }[x]} ${fx(v.slo[x])}`)
                  .join(' / ')}`,
            ),
          ),
        ),
      ]
        .sort()
        .join('; ') +
      '.',
    '',
  );
  const merge = (xs: readonly Attainment[]): Attainment => {
    const add = (a: { met: number; stated: number } | null, b: { met: number; stated: number } | null): { met: number; stated: number } | null =>
      a || b ? { met: (a?.met ?? 0) + (b?.met ?? 0), stated: (a?.stated ?? 0) + (b?.stated ?? 0) } : null;
    return xs.reduce<Attainment>(
      (a, b) => ({ requests: a.requests + b.requests, good: a.good + b.good, ttft: add(a.ttft, b.ttft), tpot: add(a.tpot, b.tpot), e2e: add(a.e2e, b.e2e) }),
      { requests: 0, good: 0, ttft: null, tpot: null, e2e: null },
    );
  };
  const cell = (a: Attainment): string => {
    const one = (x: { met: number; stated: number } | null): string => (x ? pct(x.met / x.stated) : '–');
    return a.requests ? `${pct(a.good / a.requests)} (${one(a.ttft)} / ${one(a.tpot)} / ${one(a.e2e)}; n ${a.requests})` : '–';
  };
  for (const [title, pick] of [
    ['device class', (r: RateResult) => r.stats.byDevice],
    ['request class', (r: RateResult) => r.stats.byRequestClass],
    ['device / request class', (r: RateResult) => r.stats.byClass],
  ] as const) {
    const keys = [...new Set(rows.flatMap((r) => Object.keys(pick(r))))].sort();
    md.push(`By ${title}: good (TTFT / TPOT / E2E attainment; requests).`, '');
    md.push(`| policy | ${keys.join(' | ')} |`);
    md.push(`|---|${keys.map(() => '---:').join('|')}|`);
    for (const p of ctx.policies) {
      const mine = rows.filter((r) => r.policy === p);
      md.push(
        `| ${p} | ${keys.map((k) => cell(merge(mine.map((r) => (pick(r) as Readonly<Record<string, Attainment>>)[k]).filter((x): x is Attainment => x !== undefined)))).join(' | ')} |`,
      );
    }
    md.push('');
  }
  const prediction = predictionByPolicy(rows, ctx.policies);
  // At a rate a policy does not sustain its queue grows for the whole run, so latency depends on
  // when a request arrived, not on its class: steady-state predictions are judged apart there.
  const sustainedPrediction = predictionByPolicy(
    rows.filter((r) => r.stats.slaAttainment >= s.slaTarget),
    ctx.policies,
  );
  md.push(...predictionSection(prediction, sustainedPrediction, s.slaTarget));
  md.push('## Placements used (at the highest rate)', '');
  md.push('One letter per stage (C client, S server); counts of completed requests.', '');
  for (const p of ctx.policies) {
    const top = rows.filter((r) => r.policy === p && r.repeat === repeats[0]).sort((a, b) => b.rate - a.rate)[0];
    if (!top) continue;
    const parts = Object.entries(top.stats.placements).map(
      ([cls, m]) =>
        `${cls}: ${Object.entries(m)
          .sort((a, b) => b[1] - a[1])
          .map(([pl, n]) => `\`${pl}\`×${n}`)
          .join(' ')}`,
    );
    md.push(`- **${p}** — ${parts.join('; ') || 'none'}`);
  }
  md.push('');
  const svg = renderChart({
    kind: 'line',
    title: `Goodput vs arrival rate (${s.preset}, ${s.arrival.process})`,
    xLabel: 'arrival rate (requests/s)',
    yLabel: 'goodput (requests/s meeting SLA)',
    series: [
      // The mean over repeats at each rate.
      ...ctx.policies.map((p) => ({
        name: p,
        points: ctx.rates.map((rate) => {
          const g = rows.filter((r) => r.policy === p && r.rate === rate).map((r) => r.stats.goodput);
          return { x: rate, y: g.length ? g.reduce((a, b) => a + b, 0) / g.length : 0 };
        }),
      })),
      { name: 'offered', color: '#bbbbbb', points: ctx.rates.map((r) => ({ x: r, y: r })) },
    ],
    yMin: 0,
  });
  const json = {
    scenario: s,
    scenarioPath: ctx.scenarioPath,
    settings: {
      policies: ctx.policies,
      rates: ctx.rates,
      durationS: ctx.durationS,
      seed: ctx.seed,
      repeats: ctx.repeats,
      quick: ctx.quick,
      pinned: ctx.pinned,
      modelDir: ctx.modelDir,
      stageCount: ctx.stageCount,
      ...(nExec > 1 ? { executors: nExec } : {}),
    },
    elapsedS: ctx.elapsedS,
    warnings: ctx.warnings,
    recording: ctx.recording,
    deviceLimits: DEVICE_LIMITS,
    policies: sums,
    policiesByRepeat: sumsByRepeat,
    comparison: cmp,
    ratios: rat,
    prediction: { limits: PREDICTION_LIMITS, byPolicy: prediction, byPolicySustained: sustainedPrediction },
    // Each run keeps its per-rate prediction error; the raw samples stay out of the file.
    runs: rows.map(({ predictionSamples: _samples, records: _records, ...r }) => r),
  };
  return { json, markdown: `${md.join('\n')}\n`, svg };
}

/** The prediction error per policy, over every rate and repeat: policy → 'device/requestClass' → group. */
export function predictionByPolicy(rows: readonly RateResult[], policies: readonly Policy[]): Record<string, Record<string, PredictionGroup>> {
  return Object.fromEntries(policies.map((p) => [p, predictionErrors(mergeSamples(rows.filter((r) => r.policy === p).map((r) => r.predictionSamples)))]));
}

/** The "Prediction error" section of results.md; `sustained` is the same over the rates each policy sustained (≥ slaTarget good). */
export function predictionSection(
  byPolicy: Readonly<Record<string, Readonly<Record<string, PredictionGroup>>>>,
  sustained: Readonly<Record<string, Readonly<Record<string, PredictionGroup>>>> = {},
  slaTarget = 0.9,
): string[] {
  const L = PREDICTION_LIMITS;
  const md: string[] = ['## Prediction error', ''];
  md.push(
    `The plan's predictions for each completed request against what this harness measured, over every rate: median / p90 of |predicted − measured| / measured, ` +
      `and in brackets the signed median (bias: below 0 the planner predicts too low). Judged per device / request class with ≥ ${L.minRequests} predicted requests; ` +
      `**over** marks a median above ${(L.medianRel * 100).toFixed(0)} % or a p90 above ${(L.p90Rel * 100).toFixed(0)} % (the target is on E2E). ` +
      'E2E is the plan\'s figure, priced for the class\'s expected output length; "E2E at length" re-prices it for the tokens the request produced (predicted TTFT + (tokens − 1) × TPOT). ' +
      `"sustained" is E2E over only the rates where the policy kept ≥ ${(slaTarget * 100).toFixed(0)} % of requests good (beyond them the queue grows through the run, and a request's latency depends on when it arrived). ` +
      '"floor" is the error, over the same sustained rates, of the best constant known only in hindsight (the measured median E2E of the group\'s requests on the same placement): no per-class prediction can be better, so a floor **over** the target is spread in the requests themselves. ' +
      `"recent past, sustained" is a prediction made per request when it was sent, from the TTFTs and token gaps of the requests on the same placement in the ${RECENT_WINDOW_MS / 1000} s before (the server's state at admission, as seen from outside): no better than the floor, the spread comes from what arrives after the request. ` +
      `"calibrated" is the plan's E2E corrected as the planner's calibrator would have corrected it when each request was sent (× the decayed geometric mean of measured / predicted E2E over the group's requests ended by then, half-life ${DEFAULT_CALIBRATION.halfLife}, from ${DEFAULT_CALIBRATION.minOutcomes} on): a persisting bias goes, the spread stays. ` +
      'Requests with no prediction (the all-server start-up plan, overrides) are counted apart and left out. Per-rate figures are in results.json (runs[].prediction).',
    '',
  );
  md.push(
    '| policy | device / request class | done | predicted | no prediction | E2E | E2E calibrated | E2E at length | TTFT | TPOT | E2E, sustained | calibrated, sustained | floor, sustained | recent past, sustained |',
  );
  md.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  const p1 = (v: number): string => `${(v * 100).toFixed(1)} %`;
  const cell = (x: ErrorStats | null | undefined): string => {
    if (!x) return '–';
    const body = `${p1(x.medianAbs)} / ${p1(x.p90Abs)} (${x.signedMedian > 0 ? '+' : ''}${p1(x.signedMedian)})`;
    return x.judged ? `${body}${x.flagged ? ' **over**' : ''}` : `too few (n ${x.n})`;
  };
  let any = false;
  for (const [policy, groups] of Object.entries(byPolicy)) {
    for (const [k, g] of Object.entries(groups)) {
      any = true;
      const sg = sustained[policy]?.[k];
      md.push(
        `| ${policy} | ${k} | ${g.completed} | ${g.predicted} | ${g.unpredicted} | ${cell(g.figures.e2e)} | ${cell(g.calibrated)} | ${cell(g.figures.e2eAtLength)} | ${cell(g.figures.ttft)} | ${cell(g.figures.tpot)} | ${cell(sg?.figures.e2e)} | ${cell(sg?.calibrated)} | ${cell(sg?.hindsight)} | ${cell(sg?.recent)} |`,
      );
    }
  }
  if (!any) md.push('| – | no completed requests | | | | | | | | | | | | |');
  md.push('');
  return md;
}

/**
 * The report's "Server core contended" section (empty when no run was): the runs where other
 * work took more than {@link SERVER_CONTENDED} s per s of the executor's core. Pinned, that is
 * the core's busy time beyond the executor's own CPU, which tells other work apart from the
 * executor's threads waiting for each other; not pinned, only their run-queue wait is there.
 */
export function serverContention(rows: readonly RateResult[], multi: boolean): string[] {
  const otherShare = (r: RateResult): number | null => r.serverCoreOtherShare ?? r.serverRunQueueShare;
  const contended = rows.filter((r) => (otherShare(r) ?? 0) > SERVER_CONTENDED);
  if (contended.length === 0) return [];
  return [
    '## Server core contended',
    '',
    `Other work took more than ${SERVER_CONTENDED} s per s of the executor's core in these runs (pinned: the core's busy time beyond the executor's own CPU, from /proc/stat; not pinned: the executor's threads' run-queue wait, from schedstat), so their server-side figures (latency, goodput, CPU per request) measure the machine, not the policy.`,
    '',
    ...contended.map(
      (r) =>
        `- ${multi ? `repeat ${r.repeat + 1}, ` : ''}${r.policy} @ ${r.rate} req/s: ${r.serverCoreOtherShare !== null ? `other work took ${fx(r.serverCoreOtherShare, 2)} s per s of the core` : `waited ${fx(r.serverRunQueueShare, 2)} s per s`}, the executor ran ${pct(r.serverCpuUtilisation)} of it`,
    ),
    '',
  ];
}

/**
 * The report's "Server garbage collection" section (empty when no run read the pauses): per
 * policy and rate, the executors' garbage-collection pauses, the inference thread's (each
 * stretches the engine call it falls in: every step of that call waits) and the event loop's.
 */
export function gcSection(rows: readonly RateResult[], multi: boolean): string[] {
  const read = rows.filter((r) => r.serverGcPauses);
  if (read.length === 0) return [];
  const cells = (p: ThreadPauses, wallS: number): string => `${p.count} | ${wallS > 0 ? fx((1000 * p.seconds) / wallS, 1) : '–'} | ${p.long}`;
  const md = [
    '## Server garbage collection',
    '',
    `Garbage-collection pauses of the executor's threads over each run (its /metrics before and after): how many, milliseconds paused per second of the run, and pauses over ${1000 * LONG_GC_PAUSE_S} ms. The inference thread's pause stretches the engine call it falls in, so every step of that call waits; the event loop's delays every stream.`,
    '',
    `| ${multi ? 'repeat | ' : ''}policy | rate | inference thread: pauses | ms / s | > ${1000 * LONG_GC_PAUSE_S} ms | event loop: pauses | ms / s | > ${1000 * LONG_GC_PAUSE_S} ms |`,
    `|${multi ? '---:|' : ''}---|---:|---:|---:|---:|---:|---:|---:|`,
  ];
  for (const r of read) {
    const p = r.serverGcPauses;
    if (!p) continue;
    const wallS = r.serverCpuUtilisation > 0 ? r.serverCpuS / r.serverCpuUtilisation : 0;
    md.push(`| ${multi ? `${r.repeat + 1} | ` : ''}${r.policy} | ${r.rate} | ${cells(p.engine, wallS)} | ${cells(p.main, wallS)} |`);
  }
  md.push('');
  return md;
}

/**
 * The report's "Per executor" section (several executors): each executor's requests, goodput
 * and CPU per policy and rate, attributed by the agents' outcomes (executors.ts).
 */
export function executorSection(rows: readonly RateResult[], multi: boolean): string[] {
  const md = [
    '## Per executor',
    '',
    "Each request is counted on the executor the agent's GenerationOutcome named; a request without a plan (no outcome), or whose outcome names none, ran on the agents' fallback, the first executor. " +
      "\"unattributed\": requests that followed a plan but that no outcome matched, counted on the first executor. Goodput is good requests per second of the rate's duration, so the executors' add up to the rate's; server CPU is each executor process's own (from /proc).",
    '',
    `| ${multi ? 'repeat | ' : ''}policy | rate | executor | requests | done | good | goodput | server CPU-s | server CPU-s/req | server CPU util | unattributed |`,
    `|${multi ? '---:|' : ''}---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|`,
  ];
  for (const r of rows) {
    for (const [i, e] of (r.executors ?? []).entries()) {
      md.push(
        `| ${multi ? `${r.repeat + 1} | ` : ''}${r.policy} | ${r.rate} | ${e.id} | ${e.requests} | ${e.completed} | ${e.good} | ${fx(e.goodput, 2)} | ${fx(e.serverCpuS, 2)} | ${fx(e.serverCpuPerRequestS, 4)} | ${pct(e.serverCpuUtilisation)} | ${i === 0 ? (r.unattributed ?? 0) : ''} |`,
      );
    }
    md.push(
      `| ${multi ? `${r.repeat + 1} | ` : ''}${r.policy} | ${r.rate} | **all** | ${r.stats.requests} | ${r.stats.completed} | ${r.stats.metSla} | ${fx(r.stats.goodput, 2)} | ${fx(r.serverCpuS, 2)} | ${fx(r.serverCpuPerRequestS, 4)} | ${pct(r.serverCpuUtilisation)} | |`,
    );
  }
  md.push('');
  return md;
}
