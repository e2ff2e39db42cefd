import { renderChart, type ChartSeries } from '@tandem/plot';
import { PAPER_RESULTS, SIMULATED_MODELS } from './models';
import {
  SERVING_TPOT_MS,
  summarize,
  summarizeBy,
  summarizePhased,
  type ConfigResult,
  type PhasedFigures,
  type PhasedSummary,
  type Summary,
  type SweepRanges,
} from './sweep';

/** Everything `tandem simulate` writes: the JSON document, the markdown report and the charts. */
export interface SimulationReport {
  readonly json: SimulationJson;
  readonly markdown: string;
  readonly csv: string;
  readonly charts: readonly { readonly file: string; readonly svg: string }[];
}

/** The phased comparison under one SLO rule, overall, per model and per network. */
export interface PhasedGroups {
  readonly overall: PhasedSummary;
  readonly models: readonly { readonly model: string; readonly summary: PhasedSummary }[];
  readonly networks: readonly { readonly network: string; readonly summary: PhasedSummary }[];
}

/** results.json. Fractions in [0, 1]. */
export interface SimulationJson {
  readonly ranges: SweepRanges;
  readonly decodeSteps: number;
  readonly paper: typeof PAPER_RESULTS;
  readonly overall: Summary;
  /** Only the configurations where all-client misses the SLA (the client cannot do it alone). */
  readonly overallContested: Summary;
  readonly families: readonly { readonly family: string; readonly all: Summary; readonly contested: Summary }[];
  readonly models: readonly { readonly model: string; readonly family: string; readonly all: Summary; readonly contested: Summary }[];
  readonly by: Readonly<
    Record<'slaFactor' | 'clientTflops' | 'serverTflops' | 'network' | 'activationBytes' | 'seqLen', readonly { key: string | number; summary: Summary }[]>
  >;
  /**
   * Generative models with decode steps: streamed server-only, dp and dp-phased on the same
   * generations (ConfigResult.phased), overall, per model and per network; absent otherwise.
   */
  readonly phased?: {
    readonly tpotMs: number;
    readonly e2e: PhasedGroups;
    readonly serving: PhasedGroups;
  };
}

const pct = (x: number | null | undefined): string => (x === null || x === undefined || !Number.isFinite(x) ? '—' : `${(100 * x).toFixed(1)} %`);
const pp = (x: number): string => (Number.isFinite(x) ? `${(100 * x).toFixed(1)} pp` : '—');

function row(cells: readonly (string | number)[]): string {
  return `| ${cells.join(' | ')} |`;
}

/** Builds the report from the sweep's rows. Pure. */
export function buildReport(rows: readonly ConfigResult[], ranges: SweepRanges, decodeSteps: number): SimulationReport {
  const contestedRows = rows.filter((r) => !r.clientOnlyFeasible);
  const families = [...new Set(rows.map((r) => r.family))].map((family) => ({
    family,
    all: summarize(rows.filter((r) => r.family === family)),
    contested: summarize(contestedRows.filter((r) => r.family === family)),
  }));
  const familyOf = new Map<string, ConfigResult['family']>(); // each model's family, in the order models first appear
  for (const r of rows) if (!familyOf.has(r.model)) familyOf.set(r.model, r.family);
  const models = [...familyOf].map(([model, family]) => ({
    model,
    family,
    all: summarize(rows.filter((r) => r.model === model)),
    contested: summarize(contestedRows.filter((r) => r.model === model)),
  }));
  const phasedGroups = (rule: keyof PhasedFigures): PhasedGroups | undefined => {
    const overall = summarizePhased(rows, rule);
    if (!overall) return undefined;
    const by = (key: (r: ConfigResult) => string): { key: string; summary: PhasedSummary }[] =>
      [...new Set(rows.filter((r) => r.phased).map(key))].flatMap((k) => {
        const summary = summarizePhased(
          rows.filter((r) => key(r) === k),
          rule,
        );
        return summary ? [{ key: k, summary }] : [];
      });
    return {
      overall,
      models: by((r) => r.model).map(({ key, summary }) => ({ model: key, summary })),
      networks: by((r) => r.network).map(({ key, summary }) => ({ network: key, summary })),
    };
  };
  const e2eRule = phasedGroups('e2e');
  const servingRule = phasedGroups('serving');
  const json: SimulationJson = {
    ...(e2eRule && servingRule ? { phased: { tpotMs: SERVING_TPOT_MS, e2e: e2eRule, serving: servingRule } } : {}),
    ranges,
    decodeSteps,
    paper: PAPER_RESULTS,
    overall: summarize(rows),
    overallContested: summarize(contestedRows),
    families,
    models,
    by: {
      slaFactor: summarizeBy(rows, (r) => r.slaFactor),
      clientTflops: summarizeBy(rows, (r) => r.clientTflops),
      serverTflops: summarizeBy(rows, (r) => r.serverTflops),
      network: summarizeBy(rows, (r) => r.network),
      activationBytes: summarizeBy(rows, (r) => r.activationBytes),
      seqLen: summarizeBy(rows, (r) => r.seqLen),
    },
  };
  return { json, markdown: markdown(json, rows.length), csv: csv(rows, ranges), charts: charts(json) };
}

function markdown(j: SimulationJson, total: number): string {
  const steps = j.ranges.gridSteps;
  const paperFamily = (f: string) => PAPER_RESULTS.families[f as keyof typeof PAPER_RESULTS.families];
  const out: string[] = [];
  out.push('# SplitLLM reproduction: server work by placement algorithm', '');
  out.push(
    `${total} configurations${j.decodeSteps ? `, generative models priced for ${j.decodeSteps} decode steps` : ''}; server work = server compute time. ` +
      `"contested" = configurations where all-client misses the SLA (${j.overallContested.configs} of ${total}). ` +
      "Reductions are means over configurations; the paper's overall figures are its abstract's, per-family ones come from a secondary summary.",
    '',
  );
  out.push(
    row([
      'family',
      'configs',
      'dp vs server-only',
      'contested',
      'paper',
      'dp over greedy',
      'paper',
      'dp over prefix',
      'dp over greedy-ratio',
      ...steps.map((s) => `dp-grid cost (SLA/${s})`),
    ]),
  );
  out.push(row(['---', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:', ...steps.map(() => '---:')]));
  for (const f of j.families) {
    const p = paperFamily(f.family);
    out.push(
      row([
        f.family,
        f.all.configs,
        pct(f.all.reductionVsServerOnly.dp),
        pct(f.contested.reductionVsServerOnly.dp),
        pct(p?.dpVsServerOnly),
        pct(f.all.dpOverGreedy),
        pct(p?.dpOverGreedy),
        pct(f.all.dpOverPrefix),
        pct(f.all.dpOverGreedyRatio),
        ...f.all.gridCost.map(pp),
      ]),
    );
  }
  const o = j.overall;
  out.push(
    row([
      '**overall**',
      o.configs,
      `**${pct(o.reductionVsServerOnly.dp)}**`,
      pct(j.overallContested.reductionVsServerOnly.dp),
      '≈ 33 %',
      `**${pct(o.dpOverGreedy)}**`,
      '19 %',
      pct(o.dpOverPrefix),
      pct(o.dpOverGreedyRatio),
      ...o.gridCost.map(pp),
    ]),
  );
  out.push('');
  out.push('## Per model', '');
  out.push(
    row([
      'model',
      'configs',
      'client alone fits',
      'dp',
      ...steps.map((s) => `dp-grid SLA/${s}`),
      'prefix',
      'greedy',
      'dp over greedy (pooled)',
      'dp over prefix',
      'dp shapes: all-C / S→C / C→S / multi / all-S',
    ]),
  );
  out.push(row(['---', '---:', '---:', '---:', ...steps.map(() => '---:'), '---:', '---:', '---:', '---:', '---']));
  for (const m of j.models) {
    const s = m.all;
    const sh = s.dpShapes;
    out.push(
      row([
        m.model,
        s.configs,
        pct(1 - m.contested.configs / s.configs),
        pct(s.reductionVsServerOnly.dp),
        ...s.reductionVsServerOnly.grid.map(pct),
        pct(s.reductionVsServerOnly.prefix),
        pct(s.reductionVsServerOnly.greedy),
        `${pct(s.dpOverGreedy)} (${pct(s.dpOverGreedyPooled)})`,
        pct(s.dpOverPrefix),
        [sh['all-client'], sh['server-then-client'], sh['client-then-server'], sh['multi-switch'], sh['all-server']]
          .map((x) => (100 * x).toFixed(0))
          .join(' / '),
      ]),
    );
  }
  out.push(
    '',
    'Columns dp … greedy: server-work reduction vs server-only. dp-grid cost: extra server work of dp-grid over dp, in points of server-only work.',
    '',
  );
  out.push('## Sensitivity (all models)', '');
  const labels: Record<keyof SimulationJson['by'], string> = {
    slaFactor: 'SLA / all-server latency',
    clientTflops: 'client TFLOP/s',
    serverTflops: 'server TFLOP/s',
    network: 'network',
    activationBytes: 'bytes per activation',
    seqLen: 'sequence length',
  };
  for (const key of Object.keys(labels) as (keyof SimulationJson['by'])[]) {
    out.push(row([labels[key], 'configs', 'dp vs server-only', 'prefix vs server-only', 'greedy vs server-only', 'dp over greedy', 'dp over prefix']));
    out.push(row(['---', '---:', '---:', '---:', '---:', '---:', '---:']));
    for (const { key: k, summary: s } of j.by[key]) {
      out.push(
        row([
          k,
          s.configs,
          pct(s.reductionVsServerOnly.dp),
          pct(s.reductionVsServerOnly.prefix),
          pct(s.reductionVsServerOnly.greedy),
          pct(s.dpOverGreedy),
          pct(s.dpOverPrefix),
        ]),
      );
    }
    out.push('');
  }
  out.push(`Infeasible results: ${j.overall.infeasible} (all-server meets every SLA by construction, so every algorithm should).`, '');
  if (j.phased) out.push(...phasedMarkdown(j.phased, j.decodeSteps));
  return out.join('\n');
}

function phasedMarkdown(ph: NonNullable<SimulationJson['phased']>, decodeSteps: number): string[] {
  const out = ['## Prefill and decode placed apart (generative models)', ''];
  out.push(
    `Each generative configuration again as a generation of its prompt and ${decodeSteps} decode steps, priced per pass (docs/placement.md): ` +
      "server-only is the server decoding on its own and streaming tokens; dp places both phases alike; dp-phased places them apart, each attention stage's " +
      "KV cache (2 × dModel × bytes per activation per token) handed over once when it changes side. Two SLO rules: **E2E**, the paper's " +
      "(E2E ≤ the SLA factor × server-only's), and **serving**, as serving systems state them (TTFT ≤ the SLA factor × server-only's, " +
      `TPOT ≤ ${ph.tpotMs} ms, or the factor × server-only's when that is larger). Figures are means over configurations of the server-work reduction.`,
    '',
  );
  out.push(
    row([
      'SLO rule',
      'group',
      'configs',
      'dp vs server-only',
      'dp-phased vs server-only',
      'dp-phased over dp (pooled)',
      'phases differ',
      'decode on the client',
    ]),
  );
  out.push(row(['---', '---', '---:', '---:', '---:', '---:', '---:', '---:']));
  const line = (rule: string, name: string, s: PhasedSummary): string =>
    row([
      rule,
      name,
      s.configs,
      pct(s.reductionVsServerOnly.dp),
      pct(s.reductionVsServerOnly.dpPhased),
      `${pct(s.phasedOverDp)} (${pct(s.phasedOverDpPooled)})`,
      pct(s.phasesDifferShare),
      pct(s.decodeOnClientShare),
    ]);
  for (const [rule, groups] of [
    ['E2E', ph.e2e],
    ['serving', ph.serving],
  ] as const) {
    for (const m of groups.models) out.push(line(rule, m.model, m.summary));
    for (const n of groups.networks) out.push(line(rule, `network ${n.network}`, n.summary));
    out.push(line(rule, '**overall**', groups.overall));
  }
  out.push('');
  return out;
}

function csv(rows: readonly ConfigResult[], ranges: SweepRanges): string {
  const head = [
    'model',
    'family',
    'seqLen',
    'slaFactor',
    'clientTflops',
    'serverTflops',
    'network',
    'activationBytes',
    'slaMs',
    'workServerOnly',
    'workDp',
    'workGreedy',
    'workGreedyRatio',
    'workPrefix',
    ...ranges.gridSteps.map((s) => `workGrid${s}`),
    'dpSwitches',
    'dpShape',
    'clientOnlyFeasible',
  ];
  const lines = rows.map((r) =>
    [
      r.model,
      r.family,
      r.seqLen,
      r.slaFactor,
      r.clientTflops,
      r.serverTflops,
      r.network,
      r.activationBytes,
      r.slaMs,
      r.work.serverOnly,
      r.work.dp,
      r.work.greedy,
      r.work.greedyRatio,
      r.work.prefix,
      ...r.work.grid,
      r.dpSwitches,
      r.dpShape,
      r.clientOnlyFeasible,
    ].join(','),
  );
  return `${[head.join(','), ...lines].join('\n')}\n`;
}

function charts(j: SimulationJson): { file: string; svg: string }[] {
  const models = j.models.map((m) => m.model);
  const categories = [...models, 'overall'];
  const summaries = [...j.models.map((m) => m.all), j.overall];
  const asPct = (x: number) => 100 * x;
  const byCategory = (name: string, f: (s: Summary) => number): ChartSeries => ({ name, points: summaries.map((s, i) => ({ x: i, y: asPct(f(s)) })) });
  const paperPoints = categories.map((c, i) => {
    if (c === 'overall') return { x: i, y: 100 * PAPER_RESULTS.overall.dpVsServerOnly };
    const family = SIMULATED_MODELS.find((m) => m.shape.name === c)?.family;
    const v = family ? PAPER_RESULTS.families[family].dpVsServerOnly : null;
    return { x: i, y: v === null ? NaN : 100 * v };
  });
  const byModel = renderChart({
    kind: 'bar',
    title: 'Server work saved vs server-only, per model',
    xLabel: 'model',
    yLabel: 'server-work reduction (%)',
    xCategories: categories,
    series: [
      byCategory('dp (exact)', (s) => s.reductionVsServerOnly.dp),
      byCategory(`dp-grid (SLA/${j.ranges.gridSteps[0]})`, (s) => s.reductionVsServerOnly.grid[0]),
      byCategory('prefix (best single split)', (s) => s.reductionVsServerOnly.prefix),
      byCategory('greedy', (s) => s.reductionVsServerOnly.greedy),
      byCategory('greedy-ratio', (s) => s.reductionVsServerOnly.greedyRatio),
      { name: 'paper (dp)', points: paperPoints, color: '#999999' },
    ],
    yMin: 0,
    width: 860,
  });
  const line = (key: keyof SimulationJson['by'], title: string, xLabel: string) =>
    renderChart({
      kind: 'line',
      title,
      xLabel,
      yLabel: 'server-work reduction vs server-only (%)',
      yMin: 0,
      series: [
        { name: 'dp (exact)', points: j.by[key].map((g) => ({ x: Number(g.key), y: asPct(g.summary.reductionVsServerOnly.dp) })) },
        {
          name: `dp-grid (SLA/${j.ranges.gridSteps[0]})`,
          points: j.by[key].map((g) => ({ x: Number(g.key), y: asPct(g.summary.reductionVsServerOnly.grid[0]) })),
        },
        { name: 'prefix', points: j.by[key].map((g) => ({ x: Number(g.key), y: asPct(g.summary.reductionVsServerOnly.prefix) })) },
        { name: 'greedy', points: j.by[key].map((g) => ({ x: Number(g.key), y: asPct(g.summary.reductionVsServerOnly.greedy) })) },
        { name: 'greedy-ratio', points: j.by[key].map((g) => ({ x: Number(g.key), y: asPct(g.summary.reductionVsServerOnly.greedyRatio) })) },
      ],
    });
  return [
    { file: 'reduction-by-model.svg', svg: byModel },
    { file: 'reduction-by-sla.svg', svg: line('slaFactor', 'Server work saved as the SLA loosens (all models)', 'SLA / all-server latency') },
    { file: 'reduction-by-client.svg', svg: line('clientTflops', 'Server work saved vs client speed (all models)', 'client effective TFLOP/s') },
  ];
}
