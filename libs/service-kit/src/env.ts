import { addressListProblem, addressProblem, capStatus, cut, quoted } from '@tandem/protocol';

/** One environment variable of a service: its parser, default and documentation. */
export interface EnvVar<T> {
  readonly doc: string;
  /** Default when unset or empty; undefined makes the variable required. */
  readonly default?: T;
  parse(raw: string): T;
  /** Printable default for documentation. */
  readonly shown?: string;
  /** Unset or empty is allowed and gives undefined (the feature it configures is off). */
  readonly optional?: boolean;
}

/**
 * Bad configuration of a service (its environment, the files it names, NATS refusing its
 * credentials): every problem found, all listed at once, one line each. main exits 2 (runMain).
 */
export class ConfigError extends Error {
  override name = 'ConfigError';
  readonly problems: readonly string[];
  /** Each problem is capped at 1 KiB (a guard: the values in it are cut where they are echoed). */
  constructor(problems: readonly string[]) {
    const capped = problems.map((p) => capStatus(p));
    super(`invalid configuration:\n  ${capped.join('\n  ')}`);
    this.problems = capped;
  }
}

/** Thrown by a parser; the loader prefixes the variable name. */
class ParseError extends Error {}

/** A number variable: `Number(raw)`, taken when `accepts(raw, n)`; else the error says it must be `rule`. */
function numeric(doc: string, def: number | undefined, rule: string, accepts: (raw: string, n: number) => boolean): EnvVar<number> {
  return {
    doc,
    default: def,
    shown: def === undefined ? '(required)' : String(def),
    parse: (raw) => {
      const n = Number(raw);
      if (!accepts(raw, n)) throw new ParseError(`must be ${rule}`);
      return n;
    },
  };
}

export const env = {
  string(doc: string, def?: string): EnvVar<string> {
    return { doc, default: def, parse: (raw) => raw, shown: def === undefined ? '(required)' : JSON.stringify(def) };
  },
  /** A string that must match `pattern`; `rule` says how, for the error message. */
  pattern(doc: string, def: string | undefined, pattern: RegExp, rule: string): EnvVar<string> {
    return {
      doc,
      default: def,
      shown: def === undefined ? '(required)' : JSON.stringify(def),
      parse: (raw) => {
        if (!pattern.test(raw)) throw new ParseError(`must be ${rule}`);
        return raw;
      },
    };
  },
  int(doc: string, def: number | undefined, min: number, max = Number.MAX_SAFE_INTEGER): EnvVar<number> {
    return numeric(doc, def, `an integer in ${min}..${max}`, (raw, n) => /^-?\d+$/.test(raw.trim()) && Number.isSafeInteger(n) && n >= min && n <= max);
  },
  /** An integer in min..max, or unset (undefined: `shown` says what that means, e.g. '(off)'). */
  optionalInt(doc: string, min: number, max: number, shown = '(off)'): EnvVar<number | undefined> {
    const parse = env.int(doc, undefined, min, max).parse;
    return { doc, optional: true, shown, parse };
  },
  number(doc: string, def: number | undefined, min: number, max = Number.POSITIVE_INFINITY): EnvVar<number> {
    return numeric(doc, def, `a number in ${min}..${max}`, (raw, n) => raw.trim() !== '' && Number.isFinite(n) && n >= min && n <= max);
  },
  bool(doc: string, def: boolean): EnvVar<boolean> {
    return {
      doc,
      default: def,
      shown: String(def),
      parse: (raw) => {
        const v = raw.trim().toLowerCase();
        if (['1', 'true', 'yes', 'on'].includes(v)) return true;
        if (['0', 'false', 'no', 'off'].includes(v)) return false;
        throw new ParseError('must be true or false');
      },
    };
  },
  oneOf<const T extends string>(doc: string, def: T, values: readonly T[]): EnvVar<T> {
    return {
      doc,
      default: def,
      shown: JSON.stringify(def),
      parse: (raw) => {
        if (!(values as readonly string[]).includes(raw)) throw new ParseError(`must be one of ${values.join(', ')}`);
        return raw as T;
      },
    };
  },
  /**
   * An optional gRPC address, host:port (addressProblem's rule: a port in 1..65535, a bounded
   * host name or IP), or one of the words in `words` (e.g. 'off'); unset or empty gives undefined
   * (`shown` says what that means).
   */
  optionalAddress(doc: string, shown: string, words: readonly string[] = []): EnvVar<string | undefined> {
    return {
      doc,
      optional: true,
      shown,
      parse: (raw) => {
        if (words.includes(raw)) return raw;
        const problem = addressProblem(raw);
        if (problem) throw new ParseError(words.length > 0 ? `${problem} (or ${words.map((w) => `'${w}'`).join(', ')})` : problem);
        return raw;
      },
    };
  },
  /** One address host:port or up to `max` of them separated by commas, or one of `words` (e.g. 'off'); kept as given. */
  addressList(doc: string, def: string, max: number, words: readonly string[] = []): EnvVar<string> {
    return {
      doc,
      default: def,
      shown: JSON.stringify(def),
      parse: (raw) => {
        if (words.includes(raw)) return raw;
        const problem = addressListProblem(raw, max);
        if (problem) throw new ParseError(words.length > 0 ? `${problem} (or ${words.map((w) => `'${w}'`).join(', ')})` : problem);
        return raw;
      },
    };
  },
  /** A JSON value checked by `check`, which throws an Error describing the rule broken. */
  json<T>(doc: string, def: T, check: (v: unknown) => T): EnvVar<T> {
    return {
      doc,
      default: def,
      shown: JSON.stringify(def),
      parse: (raw) => {
        let v: unknown;
        try {
          v = JSON.parse(raw);
        } catch {
          throw new ParseError('must be valid JSON');
        }
        try {
          return check(v);
        } catch (err) {
          throw new ParseError((err as Error).message);
        }
      },
    };
  },
};

export type EnvSchema = Record<string, EnvVar<unknown>>;
export type EnvValues<S extends EnvSchema> = { readonly [K in keyof S]: S[K] extends EnvVar<infer T> ? T : never };

/**
 * Reads every variable of `schema` from `source` (pure: main passes the process environment).
 * @throws ConfigError listing every variable that is missing or breaks its rule, with the value given.
 */
export function loadEnv<S extends EnvSchema>(schema: S, source: Readonly<Record<string, string | undefined>>): EnvValues<S> {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [name, v] of Object.entries(schema)) {
    const raw = source[name];
    if (raw === undefined || raw === '') {
      if (v.default === undefined && !v.optional) problems.push(`${name} is required (${v.doc})`);
      else out[name] = v.default;
      continue;
    }
    try {
      out[name] = v.parse(raw);
    } catch (err) {
      if (!(err instanceof ParseError)) throw err;
      // The value and a JSON checker's message are cut: a pasted file or a 20,000-character
      // value must not make a problem line of kilobytes (each stays under 1 KiB).
      problems.push(`${name} ${cut(err.message, 600)}, given ${quoted(raw)}`);
    }
  }
  if (problems.length) throw new ConfigError(problems);
  return Object.freeze(out) as EnvValues<S>;
}

/** A markdown table of a schema's variables, for the README. */
export function envTable(schema: EnvSchema): string {
  const rows = Object.entries(schema).map(([name, v]) => `| \`${name}\` | ${v.shown ?? ''} | ${v.doc} |`);
  return ['| variable | default | meaning |', '|---|---|---|', ...rows].join('\n');
}
