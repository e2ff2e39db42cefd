import { cut, quoted } from '@tandem/protocol';
import { UsageError } from './errors';

/** Parsed `--flag value` / `--switch` arguments of one command. */
export interface ParsedArgs {
  readonly flags: ReadonlyMap<string, string>;
  readonly switches: ReadonlySet<string>;
}

/** What a command accepts: flags that take a value, and boolean switches. */
export interface ArgSpec {
  readonly flags: readonly string[];
  readonly switches?: readonly string[];
}

/**
 * Parses `argv` against `spec`. Accepts `--flag value` and `--flag=value`.
 * @throws UsageError on an unknown flag, a flag given twice, or a flag missing its value.
 */
export function parseArgs(argv: readonly string[], spec: ArgSpec): ParsedArgs {
  const flags = new Map<string, string>();
  const switches = new Set<string>();
  const known = new Set(spec.flags);
  const knownSwitches = new Set(spec.switches ?? []);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--'))
      throw new UsageError(`unexpected argument ${quoted(arg)}: options are ${[...known, ...knownSwitches].map((f) => `--${f}`).join(', ')}`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    if (knownSwitches.has(name)) {
      if (eq >= 0) throw new UsageError(`--${name} takes no value, given ${quoted(arg.slice(eq + 1))}`);
      switches.add(name);
      continue;
    }
    if (!known.has(name)) throw new UsageError(`unknown option --${cut(name)}: options are ${[...known, ...knownSwitches].map((f) => `--${f}`).join(', ')}`);
    if (flags.has(name)) throw new UsageError(`--${name} must be given once, given twice`);
    let value: string | undefined;
    if (eq >= 0) value = arg.slice(eq + 1);
    else {
      value = argv[i + 1];
      if (value === undefined || value.startsWith('--')) throw new UsageError(`--${name} needs a value, none given`);
      i++;
    }
    flags.set(name, value);
  }
  return { flags, switches };
}

/** The value of a required flag. @throws UsageError when it is missing or empty. */
export function required(args: ParsedArgs, name: string): string {
  const v = args.flags.get(name);
  if (v === undefined || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

/** An integer flag within [min, max]. @throws UsageError naming the flag, the rule and the value. */
export function intFlag(args: ParsedArgs, name: string, opts: { min: number; max?: number; default?: number }): number {
  const raw = args.flags.get(name);
  if (raw === undefined) {
    if (opts.default === undefined) throw new UsageError(`--${name} is required`);
    return opts.default;
  }
  const n = Number(raw);
  const max = opts.max ?? Number.MAX_SAFE_INTEGER;
  if (!/^-?\d+$/.test(raw.trim()) || !Number.isSafeInteger(n) || n < opts.min || n > max) {
    throw new UsageError(`--${name} must be an integer in ${opts.min}..${max}, given ${quoted(raw)}`);
  }
  return n;
}
