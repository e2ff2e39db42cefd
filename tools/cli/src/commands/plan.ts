import { readFileSync } from 'node:fs';
import {
  ALGORITHMS, InstanceValidationError, isAlgorithm, solve, validateInstance,
  type Algorithm, type PlacementInstance, type PlacementResult,
} from '@tandem/dp';
import { parseArgs, required } from '../args';
import type { Command } from '../command';
import { UsageError } from '../errors';
import { printJson, type CliIo } from '../io';

const USAGE = `usage: tandem plan --instance FILE [--algorithm NAME] [--json]

Solves the split-placement problem (which stages run on the client, which on the server)
for one instance (a JSON object) or many (a JSON array, answered in the same order).

  --instance FILE    the instance(s): {stages:[{name, clientMs, serverMs, serverWork, inBytes}],
                     outBytes, uplink:{latencyMs, bytesPerMs}, downlink:{...}, slaMs, resolutionMs?}
  --algorithm NAME   ${ALGORITHMS.join(' | ')} (default dp, the exact optimum;
                     dp-grid needs resolutionMs)
  --json             print the answer(s) as JSON: {algorithm, feasible, placement, serverWork,
                     latencyMs, switches}

Exit codes: 0 solved (even when no placement meets the SLA: feasible is false), 2 bad
usage or bad input (the line names the field, the rule and the value), 1 anything else.`;

function readInstances(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`--instance must name a readable file, given '${file}' (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new UsageError(`--instance must hold JSON (an instance object or an array of them), given '${file}' (${(err as Error).message})`);
  }
}

function solveOne(value: unknown, algorithm: Algorithm, prefix: string): { instance: PlacementInstance; result: PlacementResult } {
  try {
    const instance = validateInstance(value, prefix);
    return { instance, result: solve(instance, algorithm) };
  } catch (err) {
    if (err instanceof InstanceValidationError) {
      // Errors raised while solving (dp-grid's resolutionMs) name the field without the array index.
      const message = err.field.startsWith(prefix) ? err.message : `${prefix}${err.message}`;
      throw new UsageError(message, { cause: err });
    }
    throw err;
  }
}

function fmt(x: number): string {
  return Number.isInteger(x) ? String(x) : x.toPrecision(6).replace(/\.?0+$/, '');
}

function humanReport(instance: PlacementInstance, r: PlacementResult, title: string): string {
  const lines = [
    `${title}algorithm ${r.algorithm}: ${r.feasible ? 'meets' : 'MISSES'} the SLA`,
    `  latency     ${fmt(r.latencyMs)} ms (SLA ${fmt(instance.slaMs)} ms)`,
    `  server work ${fmt(r.serverWork)}`,
    `  switches    ${r.switches}`,
    `  placement   ${r.placement.map((p) => (p === 'client' ? 'C' : 'S')).join('')}`,
  ];
  const width = Math.max(5, ...instance.stages.map((s) => s.name.length));
  lines.push(`  ${'#'.padStart(3)}  ${'stage'.padEnd(width)}  where   clientMs    serverMs    serverWork`);
  instance.stages.forEach((s, i) => {
    lines.push(`  ${String(i).padStart(3)}  ${s.name.padEnd(width)}  ${r.placement[i].padEnd(6)}  ${fmt(s.clientMs).padStart(10)}  ${fmt(s.serverMs).padStart(10)}  ${fmt(s.serverWork).padStart(12)}`);
  });
  return lines.join('\n');
}

/** `tandem plan`: CONTRACT §2/§3, solved by @tandem/dp. */
export const planCommand: Command = {
  path: ['plan'],
  summary: 'choose which stages run on the client and which on the server (split placement)',
  usage: USAGE,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const args = parseArgs(argv, { flags: ['instance', 'algorithm'], switches: ['json'] });
    const file = required(args, 'instance');
    const algorithm = args.flags.get('algorithm') ?? 'dp';
    if (!isAlgorithm(algorithm)) throw new UsageError(`--algorithm must be one of ${ALGORITHMS.join(', ')}, given '${algorithm}'`);
    const input = readInstances(file);
    const many = Array.isArray(input);
    const solved = many ? input.map((v, i) => solveOne(v, algorithm, `[${i}].`)) : [solveOne(input, algorithm, '')];
    if (args.switches.has('json')) {
      printJson(io, many ? solved.map((s) => s.result) : solved[0].result);
    } else {
      const text = solved.map((s, i) => humanReport(s.instance, s.result, many ? `[${i}] ` : '')).join('\n\n');
      io.stdout.write(`${text}\n`);
    }
    return 0;
  },
};
