import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ensurePresetModel, presetModelDir } from '@tandem/launcher';
import {
  BUNDLED_SCENARIOS,
  buildReport,
  loadScenario,
  DEFAULT_POLICIES,
  MAX_EXECUTORS,
  POLICIES,
  readResults,
  ResultsFileError,
  ResultsWriter,
  runLoadtest,
  ScenarioError,
  scenarioPathOf,
  type Emulation,
  type LoadtestReport,
  type Policy,
  type Scenario,
} from '@tandem/loadtest';
import { intFlag, parseArgs } from '../args';
import type { Command } from '../command';
import { UsageError } from '../errors';
import { printJson, progressReporter, type CliIo } from '../io';

const USAGE = `usage: tandem loadtest [--scenario NAME|FILE] [--quick] [--policies LIST] [--rates LIST]
                       [--duration-s N] [--seed N] [--repeats N] [--emulation replay|compute]
                       [--executors N] [--out DIR] [--json] [--preset NAME] [--model-dir DIR]
                       [--nats URL] [--no-pin] [--replay FILE]
       tandem loadtest --report-only DIR [--json]

An open-loop load generator against the real services on this machine. It starts a
nats-server, the server-executor pinned to CPU 0 (one thread: the server's capacity is the
bottleneck, as in a deployment) and one client-agent per device class of the scenario pinned
to CPU 1 (with its emulated slow-down and link), then, for each policy (the planner's
algorithm, switched between runs), replays the same seeded arrival trace at each rate and
measures server CPU-seconds per request (from /proc), throughput, attainment of the TTFT /
TPOT / end-to-end SLOs, goodput and latency percentiles. Emulated devices replay their stage
outputs from a recording made first (one-process run of the model over each class's prompt
pool), sleeping each stage's modelled cost, so many devices can share the client core.

  --scenario S      ${Object.keys(BUNDLED_SCENARIOS).join(', ')} (bundled, docs/loadtest.md) or a scenario JSON file
                    (default: default)
  --quick           the scenario's short sweep (a few rates, seconds each; < 3 min)
  --policies LIST   comma-separated subset of ${POLICIES.join(', ')}
                    (default: ${DEFAULT_POLICIES.join(', ')})
  --rates LIST      arrival rates, requests/s, e.g. 2,4,8 (default: the scenario's)
  --duration-s N    seconds of arrivals per rate (default: the scenario's)
  --seed N          seed of the arrival traces (default: the scenario's)
  --repeats N       run the whole sweep N times (fresh services, seeds seed, seed+1, ...) and
                    report each ratio between policies with its spread (default 1)
  --emulation E     replay (default: the scenario's) or compute (devices run their stages)
  --executors N     executors per stack, 1..${MAX_EXECUTORS} (default 1), each with its own id and
                    advertised address, all sharing CPU 0; agents fall back to the first. The
                    report adds each executor's requests, goodput and CPU
  --out DIR         where to write results.json, results.md, goodput.svg, records.jsonl (one
                    line per request) and logs/ (default ./loadtest-out). records.jsonl and
                    runs.json are written after each policy and rate, so a run that stops
                    early keeps the cells it finished
  --report-only DIR make results.json, results.md and goodput.svg in DIR again from its
                    runs.json and records.jsonl (a run that stopped early: the cells it finished)
  --json            print results.json to stdout instead of the markdown
  --preset NAME     model preset (default: the scenario's, normally small); created in
                    ~/.cache/tandem/models (or $TANDEM_CACHE_DIR) when missing
  --model-dir DIR   use this model directory instead of the cached preset
  --nats URL        use this NATS server instead of starting one
  --no-pin          do not pin processes with taskset
  --replay FILE     replay the device recording FILE (an earlier run's replay.bin) instead of
                    making a new one, so two runs emulate the same devices: compare two
                    versions on a machine whose speed drifts between runs. It must hold every
                    pool prompt of the scenario (same scenario, seed and preset); 2 otherwise

Progress goes to stderr. Exit 0 when the run completed (whatever the numbers), 2 for bad
flags or a bad scenario file (naming the field), 1 when the services could not run, 130/143
when interrupted (SIGINT/SIGTERM: every service it started is stopped; the finished cells stay
in runs.json and records.jsonl).`;

function numberList(raw: string, flag: string): number[] {
  const parts = raw
    .split(',')
    .map((x) => x.trim())
    .filter((x) => x !== '');
  const out = parts.map(Number);
  if (out.length === 0 || out.some((x) => !Number.isFinite(x) || x <= 0 || x > 10_000))
    throw new UsageError(`--${flag} must be a comma-separated list of numbers in (0, 10000], given '${raw}'`);
  return [...new Set(out)].sort((a, b) => a - b);
}

/** Writes the report's three files in `outDir` and prints it (the markdown, or results.json with --json). */
function writeReport(outDir: string, report: LoadtestReport, json: boolean, io: CliIo): void {
  writeFileSync(join(outDir, 'results.json'), `${JSON.stringify(report.json, null, 2)}\n`);
  writeFileSync(join(outDir, 'results.md'), report.markdown);
  writeFileSync(join(outDir, 'goodput.svg'), report.svg);
  if (json) printJson(io, report.json);
  else io.stdout.write(report.markdown);
}

/** `tandem loadtest --report-only DIR`: the report again from a run's runs.json and records.jsonl. */
function reportOnly(dirRaw: string, json: boolean, io: CliIo): number {
  const dir = resolve(dirRaw);
  if (!existsSync(dir)) throw new UsageError(`--report-only must name a load test's output directory, given '${dirRaw}' (it does not exist)`);
  let read: ReturnType<typeof readResults>;
  try {
    read = readResults(dir);
  } catch (err) {
    throw err instanceof ResultsFileError ? new UsageError(`--report-only: ${err.message}`, { cause: err }) : err;
  }
  for (const w of read.warnings) io.stderr.write(`loadtest: warning: ${w}\n`);
  writeReport(dir, buildReport(read.rows, read.ctx), json, io);
  io.stderr.write(`loadtest: wrote results.json, results.md, goodput.svg in ${dir} from ${read.rows.length} cells\n`);
  return 0;
}

/** `tandem loadtest`: the policies compared on the real services under open-loop load. */
export const loadtestCommand: Command = {
  path: ['loadtest'],
  summary: 'open-loop load test of the real services: server CPU, goodput and latency per placement policy',
  usage: USAGE,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const args = parseArgs(argv, {
      flags: [
        'scenario',
        'policies',
        'rates',
        'duration-s',
        'seed',
        'out',
        'preset',
        'model-dir',
        'nats',
        'repeats',
        'emulation',
        'executors',
        'report-only',
        'replay',
      ],
      switches: ['quick', 'json', 'no-pin'],
    });
    const only = args.flags.get('report-only');
    if (only !== undefined) {
      const other = [...[...args.flags.keys()].filter((k) => k !== 'report-only'), ...[...args.switches].filter((k) => k !== 'json')];
      if (other.length) throw new UsageError(`--report-only takes only --json besides its directory, given --${other[0]}`);
      return reportOnly(only, args.switches.has('json'), io);
    }
    const scenarioPath = scenarioPathOf(args.flags.get('scenario') ?? 'default');
    let loaded: Scenario;
    try {
      loaded = loadScenario(scenarioPath);
    } catch (err) {
      throw err instanceof ScenarioError ? new UsageError(err.message, { cause: err }) : err;
    }
    const quick = args.switches.has('quick');
    let policies: Policy[] = [...DEFAULT_POLICIES];
    const pl = args.flags.get('policies');
    if (pl !== undefined) {
      policies = pl
        .split(',')
        .map((p) => p.trim())
        .filter((p) => p !== '') as Policy[];
      const bad = policies.find((p) => !(POLICIES as readonly string[]).includes(p));
      if (bad !== undefined || policies.length === 0 || new Set(policies).size !== policies.length)
        throw new UsageError(`--policies must list distinct names from ${POLICIES.join(', ')}, given '${pl}'`);
    }
    const ratesFlag = args.flags.get('rates');
    const rates = ratesFlag !== undefined ? numberList(ratesFlag, 'rates') : [...(quick ? loaded.quick.rates : loaded.rates)];
    const dRaw = args.flags.get('duration-s');
    let durationS = quick ? loaded.quick.durationS : loaded.durationS;
    if (dRaw !== undefined) {
      durationS = Number(dRaw);
      if (!Number.isFinite(durationS) || durationS <= 0 || durationS > 86_400)
        throw new UsageError(`--duration-s must be a number in (0, 86400], given '${dRaw}'`);
    }
    const seed = intFlag(args, 'seed', { min: 0, max: 2 ** 32 - 1, default: loaded.seed });
    const preset = args.flags.get('preset') ?? loaded.preset;
    if (!/^[a-z0-9-]+$/.test(preset)) throw new UsageError(`--preset must be a preset name such as small or tiny, given '${preset}'`);
    const repeats = intFlag(args, 'repeats', { min: 1, max: 100, default: 1 });
    const executors = intFlag(args, 'executors', { min: 1, max: MAX_EXECUTORS, default: 1 });
    const em = args.flags.get('emulation') ?? loaded.emulation;
    if (em !== 'replay' && em !== 'compute') throw new UsageError(`--emulation must be replay or compute, given '${em}'`);
    if (em === 'compute' && loaded.sloReferenceTokenMs !== undefined)
      throw new UsageError(
        `--emulation compute: the scenario states sloReferenceTokenMs ${loaded.sloReferenceTokenMs} (its SLOs are scaled by the speed the replay recording measures), so it needs --emulation replay`,
      );
    const scenario = { ...loaded, preset, emulation: em as Emulation };
    const outDir = resolve(args.flags.get('out') ?? 'loadtest-out');
    const modelDir = resolve(args.flags.get('model-dir') ?? presetModelDir(preset));
    const note = (line: string): void => {
      io.stderr.write(`loadtest: ${line}\n`);
    };
    const started = performance.now();
    await ensurePresetModel(preset, modelDir, (done) => {
      if (done === 0) note(`creating the ${preset} model in ${modelDir}`);
    });
    mkdirSync(outDir, { recursive: true });
    const perPolicy = rates.length * durationS;
    note(
      `${repeats > 1 ? `${repeats} repeats × ` : ''}${policies.length} policies × ${rates.length} rates (${rates.join(', ')} req/s) × ${durationS} s; about ${Math.ceil((repeats * policies.length * (perPolicy + 8)) / 60)} min; writing to ${outDir}`,
    );
    const progress = progressReporter(io, 'loadtest');
    let lastPct = -1;
    const settings = { scenario, scenarioPath, policies, rates, durationS, seed, repeats, quick, modelDir, ...(executors > 1 ? { executors } : {}) };
    const writer = new ResultsWriter(outDir, settings);
    // SIGINT/SIGTERM end the run at once: exiting runs the launcher's and the nats-server's exit
    // hooks, which kill every service the run started; the cells finished so far stay in
    // runs.json and records.jsonl (--report-only makes their report).
    const onSignal = (sig: NodeJS.Signals): void => {
      note(`${sig}: stopping every service of the run; the finished cells are in ${outDir} (tandem loadtest --report-only ${outDir})`);
      process.exit(sig === 'SIGTERM' ? 143 : 130);
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    let run: Awaited<ReturnType<typeof runLoadtest>>;
    try {
      run = await runLoadtest({
        scenario,
        policies,
        rates,
        durationS,
        warmupS: quick ? loaded.quick.warmupS : loaded.warmupS,
        seed,
        repeats,
        modelDir,
        replayFile: join(outDir, 'replay.bin'),
        ...(args.flags.has('replay') ? { reuseReplay: resolve(args.flags.get('replay') ?? '') } : {}),
        logDir: join(outDir, 'logs'),
        natsUrl: args.flags.get('nats'),
        pin: !args.switches.has('no-pin'),
        executors,
        // Every cell's records go to records.jsonl and runs.json as it finishes.
        onCell: (result, records, soFar) => writer.cell(result, records, soFar),
        note,
        onProgress: (done, total, what) => {
          const p = Math.floor((100 * done) / Math.max(1, total));
          if (p !== lastPct || done >= total) {
            lastPct = p;
            progress(done, total, what);
          }
        },
      });
    } catch (err) {
      // A --replay recording that does not fit the scenario is a bad flag (exit 2), like a bad scenario.
      throw err instanceof ScenarioError ? new UsageError(err.message, { cause: err }) : err;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    let report: LoadtestReport;
    try {
      report = buildReport(run.results, {
        ...settings,
        pinned: run.pinned,
        warnings: run.warnings,
        recording: run.recording,
        elapsedS: (performance.now() - started) / 1000,
        stageCount: run.stageCount,
      });
    } catch (err) {
      note(`the report failed; every cell is in runs.json and records.jsonl: make it again with tandem loadtest --report-only ${outDir}`);
      throw err;
    }
    writeReport(outDir, report, args.switches.has('json'), io);
    note(`wrote results.json, results.md, goodput.svg, records.jsonl, runs.json in ${outDir} (${((performance.now() - started) / 1000).toFixed(0)} s)`);
    return 0;
  },
};
