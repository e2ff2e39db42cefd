/**
 * A load test's results written as they come: after each (policy, rate) cell the harness appends
 * the cell's requests to records.jsonl and rewrites runs.json (the cells so far and what the
 * report needs besides them), so a run that dies, or a report that throws, loses at most the
 * cell it was in; `tandem loadtest --report-only DIR` makes the report again from the two files.
 */
import { appendFileSync, existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RequestRecord } from './metrics';
import { predictionSamples } from './prediction';
import type { ReportContext } from './report';
import type { LoadtestRun, RateResult } from './run';

export const RUNS_FILE = 'runs.json';
export const RECORDS_FILE = 'records.jsonl';
/** runs.json's `format`. */
export const RUNS_FORMAT = 'tandem-loadtest-runs/1';

/** What the report needs that the run's options give, known before the run starts. */
export type RunSettings = Omit<ReportContext, 'recording' | 'pinned' | 'warnings' | 'stageCount' | 'elapsedS'>;

/** A cell as runs.json keeps it: its records are in records.jsonl, its prediction samples are made from them again. */
type StoredCell = Omit<RateResult, 'records' | 'predictionSamples'>;

interface RunsFile {
  readonly format: string;
  /** Cells the whole sweep has (policies × rates × repeats). */
  readonly expectedCells: number;
  readonly context: ReportContext;
  readonly runs: readonly StoredCell[];
}

/** Writes records.jsonl and runs.json in `dir` as cells finish (see the file comment). */
export class ResultsWriter {
  private readonly runs: StoredCell[] = [];
  private readonly started = performance.now();

  /** Empties records.jsonl and runs.json of an earlier run in `dir`. */
  constructor(
    private readonly dir: string,
    private readonly settings: RunSettings,
  ) {
    writeFileSync(join(dir, RECORDS_FILE), '');
    this.writeRuns({ recording: null, pinned: false, warnings: [], stageCount: 0, executors: settings.executors ?? 1 });
  }

  /** One finished cell: its records appended, then runs.json replaced whole (written aside and renamed). */
  cell(result: RateResult, records: readonly RequestRecord[], run: Omit<LoadtestRun, 'results'>): void {
    const lines = records.map((rec) => JSON.stringify({ repeat: result.repeat, policy: result.policy, rate: result.rate, ...rec }));
    if (lines.length) appendFileSync(join(this.dir, RECORDS_FILE), `${lines.join('\n')}\n`);
    const { records: _records, predictionSamples: _samples, ...cell } = result;
    this.runs.push(cell);
    this.writeRuns(run);
  }

  private writeRuns(run: Omit<LoadtestRun, 'results'>): void {
    const context: ReportContext = { ...this.settings, ...run, elapsedS: (performance.now() - this.started) / 1000 };
    const file: RunsFile = {
      format: RUNS_FORMAT,
      expectedCells: this.settings.policies.length * this.settings.rates.length * this.settings.repeats,
      context,
      runs: this.runs,
    };
    const path = join(this.dir, RUNS_FILE);
    writeFileSync(`${path}.tmp`, `${JSON.stringify(file, null, 2)}\n`);
    renameSync(`${path}.tmp`, path);
  }
}

/** A results directory that cannot be read, naming the file, the rule and what it holds. */
export class ResultsFileError extends Error {
  override readonly name = 'ResultsFileError';
}

/**
 * The rows and context of the load test whose results are in `dir` (runs.json, records.jsonl),
 * each row with its records and prediction samples again; `warnings` (also added to the
 * context's) say what is missing: cells the run did not finish, records of a cell it did not
 * finish, lines that do not parse.
 * @throws ResultsFileError naming the file when runs.json is missing or not a runs file.
 */
export function readResults(dir: string): { rows: RateResult[]; ctx: ReportContext; warnings: string[] } {
  const runsPath = join(dir, RUNS_FILE);
  if (!existsSync(runsPath)) throw new ResultsFileError(`${runsPath} does not exist: the directory must hold a load test's ${RUNS_FILE} and ${RECORDS_FILE}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(runsPath, 'utf8'));
  } catch (err) {
    throw new ResultsFileError(`${runsPath} must be JSON: ${(err as Error).message}`, { cause: err });
  }
  const file = parsed as Partial<RunsFile> | null;
  if (typeof file !== 'object' || file === null || file.format !== RUNS_FORMAT)
    throw new ResultsFileError(`${runsPath} must be a load test's runs file (format '${RUNS_FORMAT}'), given format ${JSON.stringify(file?.format ?? null)}`);
  if (!Array.isArray(file.runs) || typeof file.context !== 'object' || file.context === null)
    throw new ResultsFileError(`${runsPath} must hold a context object and a runs array`);
  const warnings: string[] = [];
  const cellKey = (repeat: unknown, policy: unknown, rate: unknown): string => `${String(repeat)}|${String(policy)}|${String(rate)}`;
  const byCell = new Map<string, RequestRecord[]>(file.runs.map((r) => [cellKey(r.repeat, r.policy, r.rate), []]));
  const recordsPath = join(dir, RECORDS_FILE);
  const text = existsSync(recordsPath) ? readFileSync(recordsPath, 'utf8') : '';
  if (!existsSync(recordsPath)) warnings.push(`${RECORDS_FILE} is missing: the report has no per-request figures (prediction error)`);
  const bad: number[] = [];
  let orphans = 0;
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let x: { repeat?: unknown; policy?: unknown; rate?: unknown } & RequestRecord;
    try {
      x = JSON.parse(line) as typeof x;
    } catch {
      bad.push(i + 1);
      return;
    }
    const { repeat, policy, rate, ...rec } = x;
    const cell = byCell.get(cellKey(repeat, policy, rate));
    if (cell) cell.push(rec);
    else orphans++;
  });
  if (bad.length)
    warnings.push(
      `${bad.length} lines of ${RECORDS_FILE} are not JSON and were left out (line${bad.length > 1 ? 's' : ''} ${bad.slice(0, 5).join(', ')}${bad.length > 5 ? ', …' : ''})`,
    );
  if (orphans) warnings.push(`${orphans} records of a cell the run did not finish were left out`);
  const expected = file.expectedCells ?? file.runs.length;
  if (file.runs.length < expected) warnings.push(`the run finished ${file.runs.length} of ${expected} cells (policy × rate × repeat): the report covers those`);
  const rows: RateResult[] = file.runs.map((r) => {
    const records = byCell.get(cellKey(r.repeat, r.policy, r.rate)) ?? [];
    if (records.length !== r.stats.requests)
      warnings.push(
        `${r.policy} @ ${r.rate} req/s${r.repeat > 0 ? ` (repeat ${r.repeat + 1})` : ''}: ${RECORDS_FILE} holds ${records.length} of its ${r.stats.requests} requests`,
      );
    return { ...r, records, predictionSamples: predictionSamples(records) };
  });
  const ctx: ReportContext = { ...file.context, warnings: [...(file.context.warnings ?? []), ...warnings] };
  return { rows, ctx, warnings };
}
