import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { intFlag, parseArgs } from '../args';
import type { Command } from '../command';
import { UsageError } from '../errors';
import { printJson, progressReporter, type CliIo } from '../io';
import { buildReport, DEFAULT_RANGES, QUICK_RANGES, runSweep, SIMULATED_MODELS, sweepConfigs } from '@tandem/simulate';

const MODEL_NAMES = SIMULATED_MODELS.map((m) => m.shape.name);

const USAGE = `usage: tandem simulate [--out DIR] [--quick] [--json] [--models LIST] [--decode-steps N]

Reproduces the SplitLLM evaluation with the analytic cost model at model shapes this machine
cannot run (${MODEL_NAMES.join(', ')}), sweeping sequence length, SLA, client and server
speed, network and activation width (ranges in docs/simulate.md). For each configuration it
solves server-only, greedy, prefix, dp and dp-grid and reports the server-work reduction of dp
vs server-only, its improvement over greedy and prefix and dp-grid's discretisation cost,
beside the paper's figures.

  --out DIR          where to write results.json, results.md, configs.csv and the .svg plots
                     (default ./simulate-out)
  --quick            a small corner of the sweep (seconds)
  --json             print results.json to stdout instead of the markdown tables
  --models LIST      comma-separated subset of the models
  --decode-steps N   price generative models (GPT-2) for a prompt plus N decode steps
                     instead of one forward pass (default 0, as the paper); also compares
                     dp-phased (prefill and decode placed apart) with dp and the streamed
                     server-only plan under an E2E and a TTFT/TPOT SLO rule

Progress goes to stderr.`;

/** `tandem simulate`: the paper's experiment, reproduced with @tandem/dp. */
export const simulateCommand: Command = {
  path: ['simulate'],
  summary: 'reproduce the SplitLLM experiment (server work of dp vs greedy, prefix, server-only)',
  usage: USAGE,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const args = parseArgs(argv, { flags: ['out', 'models', 'decode-steps'], switches: ['quick', 'json'] });
    const outDir = resolve(args.flags.get('out') ?? 'simulate-out');
    const decodeSteps = intFlag(args, 'decode-steps', { min: 0, max: 4096, default: 0 });
    const ranges = args.switches.has('quick') ? QUICK_RANGES : DEFAULT_RANGES;
    let models: string[] | undefined;
    const list = args.flags.get('models');
    if (list !== undefined) {
      models = list
        .split(',')
        .map((m) => m.trim())
        .filter((m) => m !== '');
      const unknown = models.find((m) => !MODEL_NAMES.includes(m));
      if (unknown !== undefined || models.length === 0) throw new UsageError(`--models must list some of ${MODEL_NAMES.join(', ')}, given '${list}'`);
    }
    const total = sweepConfigs({ ranges, models }).length;
    io.stderr.write(`simulate: ${total} configurations, writing to ${outDir}\n`);
    const progress = progressReporter(io, 'simulate');
    const step = Math.max(1, Math.floor(total / 50));
    const rows = runSweep({
      ranges,
      models,
      decodeSteps,
      onProgress: (done, all, what) => {
        if (done % step === 0 || done === all) progress(done, all, what);
      },
    });
    const report = buildReport(rows, ranges, decodeSteps);
    mkdirSync(outDir, { recursive: true });
    writeFileSync(join(outDir, 'results.json'), `${JSON.stringify(report.json, null, 2)}\n`);
    writeFileSync(join(outDir, 'results.md'), report.markdown);
    writeFileSync(join(outDir, 'configs.csv'), report.csv);
    for (const chart of report.charts) writeFileSync(join(outDir, chart.file), chart.svg);
    io.stderr.write(`simulate: wrote results.json, results.md, configs.csv, ${report.charts.map((c) => c.file).join(', ')} in ${outDir}\n`);
    if (args.switches.has('json')) printJson(io, report.json);
    else io.stdout.write(report.markdown);
    return 0;
  },
};
