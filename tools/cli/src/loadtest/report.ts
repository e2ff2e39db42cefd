import { renderChart } from '../plot/svg';
import type { RateResult } from './run';
import type { Policy, Scenario } from './scenario';

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
    requests, completed, failed: requests - completed, failures,
    slaAttainment: requests ? mine.reduce((a, r) => a + r.stats.metSla, 0) / requests : 0,
    peakGoodput: peak?.stats.goodput ?? 0,
    peakGoodputRate: peak?.rate ?? null,
    maxRateMeetingSla: ok.length ? Math.max(...ok.map((r) => r.rate)) : null,
  };
}

const ratio = (a: number | null | undefined, b: number | null | undefined): number | null => (a != null && b != null && b > 0 ? a / b : null);

export function compare(sums: readonly PolicySummary[]): Comparison {
  const by = (p: Policy): PolicySummary | undefined => sums.find((s) => s.policy === p);
  const cut = (p: Policy): number | null => { const r = ratio(by(p)?.serverCpuPerRequestS, by('server-only')?.serverCpuPerRequestS); return r === null ? null : 1 - r; };
  const gain = (a: number | null | undefined, b: number | null | undefined): number | null => { const r = ratio(a, b); return r === null ? null : r - 1; };
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

const fx = (v: number | null | undefined, d = 1): string => (v == null || !Number.isFinite(v) ? '–' : v.toFixed(d));
const pct = (v: number | null | undefined): string => (v == null || !Number.isFinite(v) ? '–' : `${(v * 100).toFixed(1)} %`);
const msCell = (v: number | null | undefined): string => (v == null ? '–' : Math.abs(v) >= 10 ? v.toFixed(0) : v.toFixed(1));

export interface ReportContext {
  readonly scenario: Scenario;
  readonly scenarioPath: string;
  readonly policies: readonly Policy[];
  readonly rates: readonly number[];
  readonly durationS: number;
  readonly seed: number;
  readonly quick: boolean;
  readonly pinned: boolean;
  readonly warnings: readonly string[];
  readonly elapsedS: number;
  readonly modelDir: string;
  readonly stageCount: number;
}

/** results.json, results.md and goodput.svg of a load test. */
export function buildReport(rows: readonly RateResult[], ctx: ReportContext): LoadtestReport {
  const s = ctx.scenario;
  const sums = ctx.policies.map((p) => summarizePolicy(p, rows, s.slaTarget));
  const cmp = compare(sums);
  const md: string[] = [];
  md.push('# tandem loadtest', '');
  md.push(`Scenario: ${ctx.scenarioPath}${s.description ? ` — ${s.description}` : ''}. Model preset \`${s.preset}\` (${ctx.stageCount} stages), ` +
    `${s.arrival.process === 'gamma' ? `gamma arrivals (cv ${s.arrival.cv})` : 'Poisson arrivals'}, ${ctx.durationS} s per rate, seed ${ctx.seed}${ctx.quick ? ', --quick' : ''}. ` +
    `Executor ${ctx.pinned ? 'pinned to CPU 0 (1 thread), agents, planner and harness to CPU 1' : 'NOT pinned'}. Run took ${ctx.elapsedS.toFixed(0)} s.`, '');
  for (const w of ctx.warnings) md.push(`> warning: ${w}`, '');
  md.push('## Per policy', '');
  md.push(`| policy | server CPU-s / request | reported server compute-s / request | peak goodput (req/s) @ rate | max rate with ≥ ${(s.slaTarget * 100).toFixed(0)} % SLA | SLA attainment (all rates) | requests | failed |`);
  md.push('|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const p of sums) {
    md.push(`| ${p.policy} | ${fx(p.serverCpuPerRequestS, 4)} | ${fx(p.reportedServerComputePerRequestS, 4)} | ${fx(p.peakGoodput, 2)} @ ${p.peakGoodputRate ?? '–'} | ${p.maxRateMeetingSla ?? 'none'} | ${pct(p.slaAttainment)} | ${p.requests} | ${p.failed}${p.failed ? ` (${Object.entries(p.failures).map(([k, v]) => `${k} ${v}`).join(', ')})` : ''} |`);
  }
  md.push('');
  md.push('## Against the paper', '');
  md.push(`| claim | paper | measured | met |`);
  md.push('|---|---:|---:|---|');
  md.push(`| server work cut, dp vs server-only | ≈ 33 % | ${pct(cmp.dpCpuReductionVsServerOnly)} | ${cmp.targets.cpuCutAtLeastOneThird === null ? '–' : cmp.targets.cpuCutAtLeastOneThird ? 'yes' : 'no'} |`);
  md.push(`| goodput gain, dp vs greedy (peak) | ≈ 19 % | ${pct(cmp.dpGoodputGainVsGreedy)} | ${cmp.targets.goodputGainAtLeast19Percent === null ? '–' : cmp.targets.goodputGainAtLeast19Percent ? 'yes' : 'no'} |`);
  md.push(`| max sustained rate gain, dp vs greedy | – | ${pct(cmp.dpMaxRateGainVsGreedy)} | |`);
  md.push(`| server work cut, greedy / prefix vs server-only | – | ${pct(cmp.greedyCpuReductionVsServerOnly)} / ${pct(cmp.prefixCpuReductionVsServerOnly)} | |`);
  md.push('');
  md.push('## Per policy and rate', '');
  md.push('Latencies in ms over completed requests (vLLM benchmark_serving definitions); failed and timed-out requests count as SLA misses.', '');
  md.push('| policy | rate | sent | done | failed | req/s | tok/s | goodput | SLA | server CPU-s/req | server CPU util | TTFT p50/p90/p99 | TPOT p50/p90/p99 | ITL p50/p90/p99 | E2E p50/p90/p99 |');
  md.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  const d3 = (d: { p50: number | null; p90: number | null; p99: number | null }): string => `${msCell(d.p50)} / ${msCell(d.p90)} / ${msCell(d.p99)}`;
  for (const r of rows) {
    const st = r.stats;
    md.push(`| ${r.policy} | ${r.rate} | ${st.requests} | ${st.completed} | ${st.failed} | ${fx(st.requestThroughput, 2)} | ${fx(st.outputTokenThroughput, 0)} | ${fx(st.goodput, 2)} | ${pct(st.slaAttainment)} | ${fx(r.serverCpuPerRequestS, 4)} | ${pct(r.serverCpuUtilisation)} | ${d3(st.ttftMs)} | ${d3(st.tpotMs)} | ${d3(st.itlMs)} | ${d3(st.e2eMs)} |`);
  }
  md.push('');
  const failedRows = rows.filter((r) => r.stats.failed > 0);
  if (failedRows.length) {
    md.push('## Failed requests', '');
    for (const r of failedRows) md.push(`- ${r.policy} @ ${r.rate} req/s: ${Object.entries(r.stats.failures).map(([k, v]) => `${v} × ${k}`).join(', ')}`);
    md.push('');
  }
  md.push('## SLA attainment by device and request class (all rates)', '');
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r.stats.byClass)))].sort();
  md.push(`| policy | ${keys.join(' | ')} |`);
  md.push(`|---|${keys.map(() => '---:').join('|')}|`);
  for (const p of ctx.policies) {
    const mine = rows.filter((r) => r.policy === p);
    md.push(`| ${p} | ${keys.map((k) => {
      const n = mine.reduce((a, r) => a + (r.stats.byClass[k]?.requests ?? 0), 0);
      const ok = mine.reduce((a, r) => a + (r.stats.byClass[k]?.metSla ?? 0), 0);
      return n ? `${pct(ok / n)} (${n})` : '–';
    }).join(' | ')} |`);
  }
  md.push('');
  md.push('## Placements used (at the highest rate)', '');
  md.push('One letter per stage (C client, S server); counts of completed requests.', '');
  for (const p of ctx.policies) {
    const top = rows.filter((r) => r.policy === p).sort((a, b) => b.rate - a.rate)[0];
    if (!top) continue;
    const parts = Object.entries(top.stats.placements).map(([cls, m]) => `${cls}: ${Object.entries(m).sort((a, b) => b[1] - a[1]).map(([pl, n]) => `\`${pl}\`×${n}`).join(' ')}`);
    md.push(`- **${p}** — ${parts.join('; ') || 'none'}`);
  }
  md.push('');
  const svg = renderChart({
    kind: 'line',
    title: `Goodput vs arrival rate (${s.preset}, ${s.arrival.process})`,
    xLabel: 'arrival rate (requests/s)',
    yLabel: 'goodput (requests/s meeting SLA)',
    series: [
      ...ctx.policies.map((p) => ({ name: p, points: rows.filter((r) => r.policy === p).map((r) => ({ x: r.rate, y: r.stats.goodput })) })),
      { name: 'offered', color: '#bbbbbb', points: ctx.rates.map((r) => ({ x: r, y: r })) },
    ],
    yMin: 0,
  });
  const json = {
    scenario: s,
    scenarioPath: ctx.scenarioPath,
    settings: { policies: ctx.policies, rates: ctx.rates, durationS: ctx.durationS, seed: ctx.seed, quick: ctx.quick, pinned: ctx.pinned, modelDir: ctx.modelDir, stageCount: ctx.stageCount },
    elapsedS: ctx.elapsedS,
    warnings: ctx.warnings,
    policies: sums,
    comparison: cmp,
    runs: rows,
  };
  return { json, markdown: `${md.join('\n')}\n`, svg };
}
