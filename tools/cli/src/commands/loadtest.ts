import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ensurePresetModel, presetModelDir } from '@tandem/launcher';
import {
  BUNDLED_SCENARIOS,
  buildReport,
  loadScenario,
  DEFAULT_POLICIES,
  POLICIES,
  runLoadtest,
  ScenarioError,
  scenarioPathOf,
  type Emulation,
  type Policy,
  type Scenario,
} from '@tandem/loadtest';
import { intFlag, parseArgs } from '../args';
import type { Command } from '../command';
import { UsageError } from '../errors';
import { printJson, progressReporter, type CliIo } from '../io';

const USAGE = `usage: tandem loadtest [--scenario NAME|FILE] [--quick] [--policies LIST] [--rates LIST]
                       [--duration-s N] [--seed N] [--repeats N] [--emulation replay|compute]
                       [--out DIR] [--json] [--preset NAME] [--model-dir DIR] [--nats URL] [--no-pin]

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
  --out DIR         where to write results.json, results.md, goodput.svg, records.jsonl (one
                    line per request) and logs/
                    (default ./loadtest-out)
  --json            print results.json to stdout instead of the markdown
  --preset NAME     model preset (default: the scenario's, normally small); created in
                    ~/.cache/tandem/models (or $TANDEM_CACHE_DIR) when missing
  --model-dir DIR   use this model directory instead of the cached preset
  --nats URL        use this NATS server instead of starting one
  --no-pin          do not pin processes with taskset

Progress goes to stderr. Exit 0 when the run completed (whatever the numbers), 2 for bad
flags or a bad scenario file (naming the field), 1 when the services could not run.`;

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

/** `tandem loadtest`: the policies compared on the real services under open-loop load. */
export const loadtestCommand: Command = {
  path: ['loadtest'],
  summary: 'open-loop load test of the real services: server CPU, goodput and latency per placement policy',
  usage: USAGE,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const args = parseArgs(argv, {
      flags: ['scenario', 'policies', 'rates', 'duration-s', 'seed', 'out', 'preset', 'model-dir', 'nats', 'repeats', 'emulation'],
      switches: ['quick', 'json', 'no-pin'],
    });
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
    const em = args.flags.get('emulation') ?? loaded.emulation;
    if (em !== 'replay' && em !== 'compute') throw new UsageError(`--emulation must be replay or compute, given '${em}'`);
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
    const run = await runLoadtest({
      scenario,
      policies,
      rates,
      durationS,
      warmupS: quick ? loaded.quick.warmupS : loaded.warmupS,
      seed,
      repeats,
      modelDir,
      replayFile: join(outDir, 'replay.bin'),
      logDir: join(outDir, 'logs'),
      natsUrl: args.flags.get('nats'),
      pin: !args.switches.has('no-pin'),
      keepRecords: true,
      note,
      onProgress: (done, total, what) => {
        const p = Math.floor((100 * done) / Math.max(1, total));
        if (p !== lastPct || done >= total) {
          lastPct = p;
          progress(done, total, what);
        }
      },
    });
    const report = buildReport(run.results, {
      scenario,
      scenarioPath,
      policies,
      rates,
      durationS,
      seed,
      repeats,
      quick,
      pinned: run.pinned,
      warnings: run.warnings,
      recording: run.recording,
      elapsedS: (performance.now() - started) / 1000,
      modelDir,
      stageCount: run.stageCount,
    });
    writeFileSync(join(outDir, 'results.json'), `${JSON.stringify(report.json, null, 2)}\n`);
    writeFileSync(join(outDir, 'results.md'), report.markdown);
    writeFileSync(join(outDir, 'goodput.svg'), report.svg);
    // Every request of every run, one JSON object a line, for analysis beyond the report.
    const lines = run.results.flatMap((r) => (r.records ?? []).map((rec) => JSON.stringify({ repeat: r.repeat, policy: r.policy, rate: r.rate, ...rec })));
    writeFileSync(join(outDir, 'records.jsonl'), lines.length ? `${lines.join('\n')}\n` : '');
    note(`wrote results.json, results.md, goodput.svg, records.jsonl in ${outDir} (${((performance.now() - started) / 1000).toFixed(0)} s)`);
    if (args.switches.has('json')) printJson(io, report.json);
    else io.stdout.write(report.markdown);
    return 0;
  },
};
