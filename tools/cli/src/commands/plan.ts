import { readFileSync } from 'node:fs';
import {
  ALGORITHMS,
  InstanceValidationError,
  SLO_KEYS,
  PHASED_ALGORITHM,
  isAlgorithm,
  isGenerationInstance,
  isPhasedInstance,
  phasedResultOf,
  solve,
  solveGeneration,
  solvePhasedDp,
  validateGenerationInstance,
  validateInstance,
  validatePhasedInstance,
  type Algorithm,
  type GenerationInstance,
  type GenerationResult,
  type PhasedResult,
  type SloKey,
  type PlacementInstance,
  type PlacementResult,
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
                     or a generation instance (docs/placement.md), marked "generation": true
                     (or with a slo and no slaMs): {stages:[{name, clientPrefillMs,
                     serverPrefillMs, clientDecodeMs, serverDecodeMs, inBytesPerToken}],
                     promptTokens, decodeSteps, outBytesPerPass, uplink, downlink,
                     slo:{e2eMs?, ttftMs?, tpotMs?}, serverEntryWork?, serverDecoding?}
                     or a phased generation instance, marked "phased": true, whose stages
                     may state kvBytesPerToken (prefill and decode placed apart) and which
                     may state kvHandover:{msPerMessageIn?, msPerMessageOut?, msPerKibIn?,
                     msPerKibOut?, chunkBytes?}, the server's work of a hand-over; a
                     generation or phased instance with "private": true keeps its first and
                     last stage (token ids in, tokens out) on the client
                     An array may mix the kinds.
  --algorithm NAME   ${ALGORITHMS.join(' | ')} | ${PHASED_ALGORITHM} (default dp, the exact
                     optimum, and dp-phased on a phased instance; dp-grid needs resolutionMs,
                     and on a generation an E2E-only slo; dp-phased only phased instances)
  --json             print the answer(s) as JSON: {algorithm, feasible, placement, serverWork,
                     latencyMs, switches}; a generation's answer adds ttftMs, tpotMs, e2eMs
                     (= latencyMs), met (per stated SLO) and serverDecoding; a phased one adds
                     prefillPlacement, decodePlacement (= placement), handoverMs, kvUpBytes,
                     kvDownBytes and handoverWork

Exit codes: 0 solved (even when no placement meets the SLA: feasible is false), 2 bad
usage or bad input (the line names the field, the rule and the value), 1 anything else.`;

function readInstances(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`--instance must name a readable file, given '${file}' (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, {
      cause: err,
    });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new UsageError(`--instance must hold JSON (an instance object or an array of them), given '${file}' (${(err as Error).message})`, { cause: err });
  }
}

type Solved =
  | { readonly kind: 'contract'; readonly instance: PlacementInstance; readonly result: PlacementResult }
  | { readonly kind: 'generation'; readonly instance: GenerationInstance; readonly result: GenerationResult }
  | { readonly kind: 'phased'; readonly instance: GenerationInstance; readonly result: PhasedResult };

/** The --algorithm given, or undefined for each instance's default (dp; dp-phased on a phased instance). */
type Choice = Algorithm | typeof PHASED_ALGORITHM | undefined;

function solveOne(value: unknown, choice: Choice, prefix: string): Solved {
  try {
    if (isPhasedInstance(value, prefix)) {
      const instance = validatePhasedInstance(value, prefix);
      if (choice === undefined || choice === PHASED_ALGORITHM) return { kind: 'phased', instance, result: solvePhasedDp(instance) };
      // Any other algorithm places both phases alike.
      const r = solveGeneration(instance, choice);
      return { kind: 'phased', instance, result: phasedResultOf(instance, choice, r.placement, [...r.placement]) };
    }
    if (choice === PHASED_ALGORITHM) {
      throw new UsageError(
        `${prefix}phased must be true for --algorithm ${PHASED_ALGORITHM} (a generation instance with "phased": true), given ${isGenerationInstance(value) ? 'a generation instance without it' : 'a contract instance'}`,
      );
    }
    const algorithm = choice ?? 'dp';
    if (isGenerationInstance(value)) {
      const instance = validateGenerationInstance(value, prefix);
      return { kind: 'generation', instance, result: solveGeneration(instance, algorithm) };
    }
    const instance = validateInstance(value, prefix);
    return { kind: 'contract', instance, result: solve(instance, algorithm) };
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

const SLO_LABEL = { ttftMs: 'TTFT', tpotMs: 'TPOT', e2eMs: 'E2E' } as const;

/** One line per SLO objective: its figure and, when stated, the bound and whether it is met. */
function sloLines(instance: GenerationInstance, r: Pick<GenerationResult, SloKey | 'met'>): string[] {
  return SLO_KEYS.map((k) => {
    const bound = instance.slo[k];
    const verdict = bound === undefined ? '(no SLO)' : `(SLO ${fmt(bound)} ms: ${r.met[k] ? 'met' : 'MISSED'})`;
    return `  ${SLO_LABEL[k].padEnd(11)} ${fmt(r[k])} ms ${verdict}`;
  });
}

const letters = (p: readonly string[]): string => p.map((l) => (l === 'client' ? 'C' : 'S')).join('');

function phasedReport(instance: GenerationInstance, r: PhasedResult, title: string): string {
  const lines = [
    `${title}algorithm ${r.algorithm}: ${r.feasible ? 'meets every SLO' : 'MISSES an SLO'}${r.serverDecoding ? ' (decoded on the server, tokens streamed)' : ''}`,
  ];
  lines.push(...sloLines(instance, r));
  lines.push(
    `  server work ${fmt(r.serverWork)}`,
    `  hand-over   ${fmt(r.handoverMs)} ms (KV cache up ${fmt(r.kvUpBytes)} B, down ${fmt(r.kvDownBytes)} B; server work ${fmt(r.handoverWork)})`,
    `  prefill     ${letters(r.prefillPlacement)}`,
    `  decode      ${letters(r.decodePlacement)} (${r.switches} transfers per pass)`,
  );
  const width = Math.max(5, ...instance.stages.map((s) => s.name.length));
  lines.push(`  ${'#'.padStart(3)}  ${'stage'.padEnd(width)}  prefill  decode  kvBytesPerToken`);
  instance.stages.forEach((s, i) => {
    lines.push(
      `  ${String(i).padStart(3)}  ${s.name.padEnd(width)}  ${r.prefillPlacement[i].padEnd(7)}  ${r.decodePlacement[i].padEnd(6)}  ${fmt(s.kvBytesPerToken ?? 0).padStart(15)}`,
    );
  });
  return lines.join('\n');
}

function generationReport(instance: GenerationInstance, r: GenerationResult, title: string): string {
  const lines = [
    `${title}algorithm ${r.algorithm}: ${r.feasible ? 'meets every SLO' : 'MISSES an SLO'}${r.serverDecoding ? ' (all-server, decoded on the server, tokens streamed)' : ''}`,
  ];
  lines.push(...sloLines(instance, r));
  lines.push(`  server work ${fmt(r.serverWork)}`, `  switches    ${r.switches} per pass`, `  placement   ${letters(r.placement)}`);
  const width = Math.max(5, ...instance.stages.map((s) => s.name.length));
  lines.push(`  ${'#'.padStart(3)}  ${'stage'.padEnd(width)}  where   clientPrefillMs  serverPrefillMs  clientDecodeMs  serverDecodeMs`);
  instance.stages.forEach((s, i) => {
    lines.push(
      `  ${String(i).padStart(3)}  ${s.name.padEnd(width)}  ${r.placement[i].padEnd(6)}  ${fmt(s.clientPrefillMs).padStart(15)}  ${fmt(s.serverPrefillMs).padStart(15)}  ${fmt(s.clientDecodeMs).padStart(14)}  ${fmt(s.serverDecodeMs).padStart(14)}`,
    );
  });
  return lines.join('\n');
}

function humanReport(instance: PlacementInstance, r: PlacementResult, title: string): string {
  const lines = [
    `${title}algorithm ${r.algorithm}: ${r.feasible ? 'meets' : 'MISSES'} the SLA`,
    `  latency     ${fmt(r.latencyMs)} ms (SLA ${fmt(instance.slaMs)} ms)`,
    `  server work ${fmt(r.serverWork)}`,
    `  switches    ${r.switches}`,
    `  placement   ${letters(r.placement)}`,
  ];
  const width = Math.max(5, ...instance.stages.map((s) => s.name.length));
  lines.push(`  ${'#'.padStart(3)}  ${'stage'.padEnd(width)}  where   clientMs    serverMs    serverWork`);
  instance.stages.forEach((s, i) => {
    lines.push(
      `  ${String(i).padStart(3)}  ${s.name.padEnd(width)}  ${r.placement[i].padEnd(6)}  ${fmt(s.clientMs).padStart(10)}  ${fmt(s.serverMs).padStart(10)}  ${fmt(s.serverWork).padStart(12)}`,
    );
  });
  return lines.join('\n');
}

/** `tandem plan`: CONTRACT §2/§3, solved by @tandem/dp, plus generation instances (docs/placement.md). */
export const planCommand: Command = {
  path: ['plan'],
  summary: 'choose which stages run on the client and which on the server (split placement)',
  usage: USAGE,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const args = parseArgs(argv, { flags: ['instance', 'algorithm'], switches: ['json'] });
    const file = required(args, 'instance');
    const given = args.flags.get('algorithm');
    if (given !== undefined && given !== PHASED_ALGORITHM && !isAlgorithm(given)) {
      throw new UsageError(`--algorithm must be one of ${[...ALGORITHMS, PHASED_ALGORITHM].join(', ')}, given '${given}'`);
    }
    const choice = given as Choice;
    const input = readInstances(file);
    const many = Array.isArray(input);
    const solved = many ? input.map((v, i) => solveOne(v, choice, `[${i}].`)) : [solveOne(input, choice, '')];
    if (args.switches.has('json')) {
      printJson(io, many ? solved.map((s) => s.result) : solved[0].result);
    } else {
      const text = solved
        .map((s, i) => {
          const title = many ? `[${i}] ` : '';
          if (s.kind === 'phased') return phasedReport(s.instance, s.result, title);
          return s.kind === 'generation' ? generationReport(s.instance, s.result, title) : humanReport(s.instance, s.result, title);
        })
        .join('\n\n');
      io.stdout.write(`${text}\n`);
    }
    return 0;
  },
};
