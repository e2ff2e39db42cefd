import { mkdtempSync, readFileSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  attributeExecutors,
  buildReport,
  deviceSide,
  executorShares,
  executorSection,
  predictionSamples,
  readResults,
  RECORDS_FILE,
  ResultsFileError,
  ResultsWriter,
  RUNS_FILE,
  summarize,
  validateScenario,
  type OutcomeSeen,
  type RateResult,
  type ReportContext,
  type RequestRecord,
} from '../src';
import { rec as baseRec } from './records';
import tiny from './tiny-scenario.json';

// Several executors in a load test: attributing requests by the agents' outcomes, each
// executor's share; results written per cell and the report made again from them.

/** A record of device 'fast', class 'short', planned at epoch 1, with three tokens ending at 100 ms; with `p` on top. */
const rec = (p: Partial<RequestRecord>): RequestRecord =>
  baseRec({ device: 'fast', requestClass: 'short', tokenMs: [50, 80, 100], endMs: 100, planEpoch: 1, ...p });

/** The outcome the agent `lt-<device>` would publish for `r`, sent at `t0` (Unix ms), `skewMs` later than the harness saw it end. */
const outcomeOf = (r: RequestRecord, t0: number, executorId: string, skewMs = 2): OutcomeSeen => ({
  clientId: `lt-${r.device}`,
  promptTokens: r.promptTokens,
  newTokens: r.tokenMs.length,
  unixMs: t0 + r.sentMs + r.endMs - skewMs,
  e2eMs: r.endMs - 2 * skewMs,
  executorId,
});

const agentOf = (d: string): string => `lt-${d}`;
const T0 = 1_800_000_000_000;

describe('attributing requests to executors', () => {
  it("joins each request to its agent's outcome by shape and time, closest first, and takes the outcome's executor", () => {
    // Two requests of one shape on one agent 30 ms apart, on different executors; one of another shape; one on another agent.
    const a = rec({ index: 0, sentMs: 0, endMs: 100 });
    const b = rec({ index: 1, sentMs: 30, endMs: 100 });
    const c = rec({ index: 2, sentMs: 10, promptTokens: 9, tokenMs: [40, 60], endMs: 60 });
    const d = rec({ index: 3, device: 'slow', sentMs: 0, endMs: 100 });
    // Listed out of order: the join does not depend on arrival order.
    const outs = [outcomeOf(b, T0, 'e2'), outcomeOf(d, T0, 'e2'), outcomeOf(a, T0, 'e1'), outcomeOf(c, T0, 'e2')];
    const { records, unmatched } = attributeExecutors([a, b, c, d], outs, { agentOf, traceStartUnixMs: T0, fallback: 'e1' });
    expect(records.map((r) => r.executorId)).toEqual(['e1', 'e2', 'e2', 'e2']);
    expect(unmatched).toBe(0);
    // The records are otherwise untouched.
    expect(records[2]).toEqual({ ...c, executorId: 'e2' });
  });

  it('puts a request without a plan, or whose outcome names no executor, on the fallback, and counts planned ones no outcome joins', () => {
    const startup = rec({ index: 0, planEpoch: 0 });
    const unnamed = rec({ index: 1, sentMs: 500 });
    const lost = rec({ index: 2, sentMs: 1000 });
    // An outcome too far in time (2 s off) and one of another token count do not join `lost`.
    const far = { ...outcomeOf(lost, T0, 'e2'), unixMs: T0 + 3100 };
    const other = { ...outcomeOf(lost, T0, 'e2'), newTokens: 2 };
    const { records, unmatched } = attributeExecutors([startup, unnamed, lost], [outcomeOf(unnamed, T0, ''), far, other], {
      agentOf,
      traceStartUnixMs: T0,
      fallback: 'e1',
    });
    expect(records.map((r) => r.executorId)).toEqual(['e1', 'e1', 'e1']);
    expect(unmatched).toBe(1);
  });

  it("keeps the executor a request's Generate summary named, and leaves its outcome to the others", () => {
    const named = rec({ index: 0, sentMs: 0, executorId: 'e3' });
    const b = rec({ index: 1, sentMs: 1 });
    // The outcome fits either request best by time; the named one does not take it.
    const { records, unmatched } = attributeExecutors([named, b], [outcomeOf(named, T0, 'e2')], { agentOf, traceStartUnixMs: T0, fallback: 'e1' });
    expect(records.map((r) => r.executorId)).toEqual(['e3', 'e2']);
    expect(unmatched).toBe(0);
  });

  it('joins each outcome to one request at most', () => {
    const a = rec({ index: 0, sentMs: 0 });
    const b = rec({ index: 1, sentMs: 1 });
    const { records, unmatched } = attributeExecutors([a, b], [outcomeOf(a, T0, 'e2')], { agentOf, traceStartUnixMs: T0, fallback: 'e1' });
    expect(records.map((r) => r.executorId)).toEqual(['e2', 'e1']);
    expect(unmatched).toBe(1);
  });

  it("gives each executor its requests, goodput and CPU, the goodputs adding up to the cell's, and lists an idle executor", () => {
    const rs = [
      rec({ index: 0, executorId: 'e1' }),
      rec({ index: 1, executorId: 'e2' }),
      rec({ index: 2, executorId: 'e2', endMs: 400 }), // over its 300 ms SLO
      rec({ index: 3, executorId: 'e2', status: 'UNAVAILABLE', tokenMs: [] }),
      rec({ index: 4 }), // no executor: the first
      rec({ index: 5, executorId: 'stray' }),
    ];
    const shares = executorShares(
      rs,
      ['e1', 'e2', 'e3'],
      new Map([
        ['e1', 1],
        ['e2', 3],
        ['e3', 0.5],
      ]),
      2,
      4,
    );
    expect(shares).toEqual([
      { id: 'e1', requests: 2, completed: 2, good: 2, goodput: 1, serverCpuS: 1, serverCpuPerRequestS: 0.5, serverCpuUtilisation: 0.25 },
      { id: 'e2', requests: 3, completed: 2, good: 1, goodput: 0.5, serverCpuS: 3, serverCpuPerRequestS: 1.5, serverCpuUtilisation: 0.75 },
      { id: 'e3', requests: 0, completed: 0, good: 0, goodput: 0, serverCpuS: 0.5, serverCpuPerRequestS: null, serverCpuUtilisation: 0.125 },
      { id: 'stray', requests: 1, completed: 1, good: 1, goodput: 0.5, serverCpuS: null, serverCpuPerRequestS: null, serverCpuUtilisation: null },
    ]);
    expect(shares.reduce((a, s) => a + s.goodput, 0)).toBeCloseTo(summarize(rs, 2).goodput, 12);
  });
});

const scenario = validateScenario(tiny);
const settings = {
  scenario,
  scenarioPath: 'tiny.json',
  policies: ['server-only', 'dp'] as const,
  rates: [3, 6],
  durationS: 2,
  seed: 5,
  repeats: 1,
  quick: false,
  modelDir: '/models/tiny',
};
const runInfo = { recording: null, pinned: true, warnings: [], stageCount: 6, executors: 1 };

/** A cell as the harness makes it from `records`. */
function cell(policy: 'server-only' | 'dp', rate: number, records: RequestRecord[], patch: Partial<RateResult> = {}): RateResult {
  const stats = summarize(records, 2);
  return {
    repeat: 0,
    seed: 5,
    policy,
    rate,
    stats,
    serverCpuS: 1,
    serverCpuPerRequestS: stats.completed ? 1 / stats.completed : null,
    serverCpuUtilisation: 0.5,
    serverRunQueueShare: 0,
    serverCoreOtherShare: 0,
    reportedServerComputeS: 0.5,
    agentsCpuS: 0.1,
    deviceSide: deviceSide(records, null, new Map(), 0.1, 0.2, 2),
    prediction: {},
    predictionSamples: predictionSamples(records),
    plans: {},
    ...patch,
  };
}

describe('the report with several executors', () => {
  it('has a Per executor section with each executor and the total; with one executor it has none and its settings are unchanged', () => {
    const records = [rec({ index: 0, executorId: 'lt-executor-1' }), rec({ index: 1, executorId: 'lt-executor-2' })];
    const shares = executorShares(
      records,
      ['lt-executor-1', 'lt-executor-2'],
      new Map([
        ['lt-executor-1', 0.4],
        ['lt-executor-2', 0.6],
      ]),
      2,
      2,
    );
    const two = cell('dp', 3, records, { executors: shares, unattributed: 1 });
    const ctx: ReportContext = { ...settings, policies: ['dp'], rates: [3], ...runInfo, executors: 2, elapsedS: 1 };
    const md = buildReport([two], ctx).markdown;
    expect(md).toContain('## Per executor');
    expect(md).toContain('2 executors (1 thread each) sharing CPU 0');
    expect(md).toContain('| dp | 3 | lt-executor-1 | 1 | 1 | 1 | 0.50 | 0.40 | 0.4000 | 20.0 % | 1 |');
    expect(md).toContain('| dp | 3 | lt-executor-2 | 1 | 1 | 1 | 0.50 | 0.60 | 0.6000 | 30.0 % |  |');
    expect(md).toContain('| dp | 3 | **all** | 2 | 2 | 2 | 1.00 |');
    expect((buildReport([two], ctx).json as { settings: { executors?: number } }).settings.executors).toBe(2);
    const one = buildReport([cell('dp', 3, records)], { ...ctx, executors: 1 });
    expect(one.markdown).not.toContain('Per executor');
    expect(one.markdown).toContain('Executor pinned to CPU 0 (1 thread)');
    expect((one.json as { settings: Record<string, unknown> }).settings).not.toHaveProperty('executors');
    expect(executorSection([cell('dp', 3, records)], false).filter((l) => l.includes('lt-executor'))).toEqual([]);
  });

  it('states each SLO of a run to 0.1 ms (a run scales them by its recording)', () => {
    const scaled = [rec({ index: 0, slo: { ttftMs: 184.88528125004677, tpotMs: 18.488528125004677 } })];
    const md = buildReport([cell('dp', 3, scaled)], { ...settings, policies: ['dp'], rates: [3], ...runInfo, elapsedS: 1 }).markdown;
    expect(md).toContain('fast/short TTFT 184.9 / TPOT 18.5.');
  });
});

describe('results written per cell', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-lt-results-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const recordsOf = (n: number, predicted: number): RequestRecord[] =>
    Array.from({ length: n }, (_, i) => rec({ index: i, sentMs: i * 100, predictedE2eMs: predicted, executorId: 'lt-executor-1' }));

  it("a run that stopped after its first cell leaves that cell's records, and the report made from them equals the one the run would have made", () => {
    const w = new ResultsWriter(dir, settings);
    const first = cell('server-only', 3, recordsOf(6, 120));
    w.cell(first, recordsOf(6, 120), runInfo);
    // The second cell's records were being appended when the process died: one whole line and a cut one.
    const lines = recordsOf(2, 90).map((r) => JSON.stringify({ repeat: 0, policy: 'server-only', rate: 6, ...r }));
    appendFileSync(join(dir, RECORDS_FILE), `${lines[0]}\n${lines[1].slice(0, 20)}`);

    const { rows, ctx, warnings } = readResults(dir);
    expect(rows).toHaveLength(1);
    expect(rows[0].records).toEqual(recordsOf(6, 120));
    expect(rows[0].predictionSamples).toEqual(first.predictionSamples);
    expect(warnings).toEqual([
      '1 lines of records.jsonl are not JSON and were left out (line 8)',
      '1 records of a cell the run did not finish were left out',
      'the run finished 1 of 4 cells (policy × rate × repeat): the report covers those',
    ]);
    const again = buildReport(rows, ctx);
    const direct = buildReport([first], { ...settings, ...runInfo, elapsedS: ctx.elapsedS, warnings: warnings });
    expect(again.markdown).toBe(direct.markdown);
    expect(again.markdown).toContain('> warning: the run finished 1 of 4 cells');
    expect(again.markdown).toMatch(/\| server-only \| 3 \| 6 \| 6 \| 0 \|/);
    // The prediction error comes from the records again.
    expect(again.markdown).toMatch(/\| server-only \| fast\/short \| 6 \| 6 \| 0 \|/);
  });

  it('keeps every cell and its run information as it goes, and a later run in the same directory starts the files afresh', () => {
    const w = new ResultsWriter(dir, settings);
    w.cell(cell('server-only', 3, recordsOf(2, 100)), recordsOf(2, 100), runInfo);
    w.cell(cell('server-only', 6, recordsOf(3, 100)), recordsOf(3, 100), { ...runInfo, warnings: ['late'] });
    const runs = JSON.parse(readFileSync(join(dir, RUNS_FILE), 'utf8'));
    expect(runs.runs.map((r: RateResult) => r.rate)).toEqual([3, 6]);
    expect(runs.runs[0]).not.toHaveProperty('records');
    expect(runs.runs[0]).not.toHaveProperty('predictionSamples');
    expect(runs.context).toMatchObject({ warnings: ['late'], pinned: true, stageCount: 6, policies: ['server-only', 'dp'] });
    expect(readFileSync(join(dir, RECORDS_FILE), 'utf8').trim().split('\n')).toHaveLength(5);
    new ResultsWriter(dir, settings);
    expect(readFileSync(join(dir, RECORDS_FILE), 'utf8')).toBe('');
    expect(readResults(dir).rows).toEqual([]);
  });

  it('refuses a directory without runs.json, or with one that is not JSON or not a runs file, naming the file', () => {
    expect(() => readResults(dir)).toThrow(ResultsFileError);
    expect(() => readResults(dir)).toThrow(/runs\.json does not exist/);
    writeFileSync(join(dir, RUNS_FILE), '{');
    expect(() => readResults(dir)).toThrow(/runs\.json must be JSON/);
    writeFileSync(join(dir, RUNS_FILE), '{"format":"other"}');
    expect(() => readResults(dir)).toThrow(/runs\.json must be a load test's runs file \(format 'tandem-loadtest-runs\/1'\), given format "other"/);
  });
});
