import * as path from 'node:path';
import { DEFAULT_NATS_URL, DEMO_DEVICES, DEMO_SEED, DemoInterrupted, demoModelDir, ensureNats, NatsSetupError, runDemo } from '@tandem/demo';
import { ensurePresetModel } from '@tandem/launcher';
import { PRESETS } from '@tandem/model';
import { intFlag, parseArgs } from '../args';
import type { Command } from '../command';
import { UsageError } from '../errors';
import { printJson, progressReporter, type CliIo } from '../io';
import { existingModelFlag } from '../model-flags';
import { formatDemoReport } from '../views/demo-report';

/** The prompt of every generation. */
export const DEMO_PROMPT = 'The quick brown fox';
/** Generations per agent. */
export const DEMO_RUNS_PER_AGENT = 2;
/** Bound on the wait for the agents' first plans. */
export const DEMO_PLAN_WAIT_MS = 20_000;

const USAGE = `usage: tandem demo [--preset NAME | --model DIR] [--tokens N] [--plaintext] [--own-nats] [--stay] [--json] [--keep-logs]

Runs Tandem end to end on this machine: a server-executor, a planner and three client-agents
(emulated devices: ${DEMO_DEVICES.map((d) => `${d.id} ${d.slowdown}x slower, ${d.linkLatencyMs} ms link`).join('; ')}),
each as its own process. Waits for the planner's plans, runs ${DEMO_RUNS_PER_AGENT} generations per device
through its Generate API ("${DEMO_PROMPT}"), prints what each device ran where and how long
it took against its SLA, and stops everything. See docs/demo.md.

The planner serves its live dashboard on a free port of 127.0.0.1 while the demo runs (the
demo prints its URL); --stay keeps every service running after the generations, so the
dashboard can be watched, until Ctrl-C stops them and prints the report.

Every gRPC port serves TLS with a CA and certificates made for this run (openssl, as
\`tandem certs\`): the executor and the planner require client certificates (mTLS) and
bearer tokens (one per device, each allowed only its own plans and sessions), the agents'
Generate APIs tokens (docs/security.md). --plaintext runs without any of it.

NATS: $NATS_URL (default ${DEFAULT_NATS_URL}) when it accepts connections (the services then
connect without credentials), otherwise a nats-server the demo starts on a free port
($NATS_SERVER_BIN, /usr/sbin or PATH) with one user per service, each allowed only its own
subjects (as \`tandem nats-config\` writes; docs/security.md (NATS)).

  --preset NAME   synthetic model preset: ${Object.keys(PRESETS).join(', ')} (default small); created once
                  (seed ${DEMO_SEED}) in ./.tandem/models/NAME-${DEMO_SEED}
  --model DIR     use this existing model directory instead
  --tokens N      tokens per generation, 1..512 (default 16)
  --own-nats      always start the demo's own nats-server with credentials, even when
                  $NATS_URL answers
  --json          print the report as one JSON document
  --plaintext     no TLS and no tokens (the services' defaults)
  --keep-logs     keep the services' log directory (it is always kept when something fails)
  --stay          after the generations, keep the services running for other clients (e.g.
                  examples/python) until Ctrl-C; a progress line names their addresses and the
                  credentials' files; then they stop, the report is printed and the exit code is 0

Exit codes: 0 done, 2 bad usage or no NATS available, 1 a service failed,
130/143 interrupted (SIGINT/SIGTERM; the services are stopped first).`;

/** `tandem demo`: the whole system on one machine. */
export const demoCommand: Command = {
  path: ['demo'],
  summary: 'run planner, server-executor and three emulated devices end to end, then stop them',
  usage: USAGE,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const startedAt = performance.now();
    const args = parseArgs(argv, { flags: ['preset', 'model', 'tokens'], switches: ['json', 'keep-logs', 'plaintext', 'own-nats', 'stay'] });
    const presetFlag = args.flags.get('preset');
    const modelFlag = args.flags.get('model');
    if (presetFlag !== undefined && modelFlag !== undefined)
      throw new UsageError(`--preset and --model are exclusive: give one of them, given --preset '${presetFlag}' and --model '${modelFlag}'`);
    const preset = presetFlag ?? 'small';
    if (!Object.prototype.hasOwnProperty.call(PRESETS, preset))
      throw new UsageError(`--preset must be one of ${Object.keys(PRESETS).join(', ')}, given '${preset}'`);
    if (modelFlag === '') throw new UsageError("--model must name a model directory, given ''");
    const tokens = intFlag(args, 'tokens', { min: 1, max: 512, default: 16 });
    const json = args.switches.has('json');
    const given = modelFlag !== undefined ? { dir: path.resolve(modelFlag), manifest: await existingModelFlag(path.resolve(modelFlag)) } : undefined;
    const progress = (line: string): void => {
      io.stderr.write(`demo ${((performance.now() - startedAt) / 1000).toFixed(1).padStart(5)} s: ${line}\n`);
    };

    // SIGINT/SIGTERM stop the services before the demo exits.
    const ac = new AbortController();
    const onSignal = (sig: NodeJS.Signals): void => {
      // A second signal exits at once; the 'exit' hooks still kill every child.
      if (ac.signal.aborted) process.exit(sig === 'SIGTERM' ? 143 : 130);
      progress(`${sig}: stopping the services (again to exit at once)`);
      ac.abort(sig);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    try {
      // NATS first: when there is none and no nats-server either, say so before any model work.
      const nats = await ensureNats(process.env.NATS_URL || DEFAULT_NATS_URL, { log: progress, ownServer: args.switches.has('own-nats') }).catch(
        (err: unknown) => {
          throw err instanceof NatsSetupError ? new UsageError(err.message, { cause: err }) : err;
        },
      );
      try {
        let modelDir: string;
        let manifest;
        if (given) {
          ({ dir: modelDir, manifest } = given);
          progress(`model ${modelDir} (${manifest.stages.length} stages)`);
        } else {
          modelDir = demoModelDir(preset);
          const bar = progressReporter(io, `demo: creating model ${preset}`);
          const m = await ensurePresetModel(preset, modelDir, (done, total) =>
            bar(done, total, `${(done / 1048576).toFixed(0)}/${(total / 1048576).toFixed(0)} MiB`),
          );
          manifest = m.manifest;
          progress(`${m.created ? 'created' : 'using cached'} model ${preset} (seed ${DEMO_SEED}, ${manifest.stages.length} stages) in ${modelDir}`);
        }
        ac.signal.throwIfAborted();
        const report = await runDemo({
          modelDir,
          manifest,
          preset: modelFlag === undefined ? preset : undefined,
          nats,
          prompt: DEMO_PROMPT,
          tokens,
          runsPerAgent: DEMO_RUNS_PER_AGENT,
          keepLogs: args.switches.has('keep-logs'),
          planWaitMs: DEMO_PLAN_WAIT_MS,
          signal: ac.signal,
          startedAt,
          progress,
          tls: !args.switches.has('plaintext'),
          stay: args.switches.has('stay'),
        });
        if (json) printJson(io, report);
        else io.stdout.write(formatDemoReport(report));
        return 0;
      } finally {
        if (nats.startedHere) progress('stopping the nats-server the demo started');
        await nats.stop();
      }
    } catch (err) {
      if (err instanceof DemoInterrupted || ac.signal.aborted) {
        progress('interrupted; every service has been stopped');
        return ac.signal.reason === 'SIGTERM' ? 143 : 130;
      }
      throw err;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  },
};
