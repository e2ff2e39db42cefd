/**
 * Helpers for the bad-input corpora (e2e/test/CORPUS.md): each case asserts a status or exit
 * code and a message that names the field and the rule and fits in 1 KiB.
 */

/** Largest message a refusal may carry, UTF-8 bytes. */
export const MAX_MESSAGE_BYTES = 1024;

/** A problem message's checks: it contains every part and fits in 1 KiB. Returns what failed, or '' (for a readable jest diff). */
export function clearMessageProblem(message: string | undefined, parts: readonly string[]): string {
  if (message === undefined) return 'no message';
  const bytes = Buffer.byteLength(message, 'utf8');
  if (bytes > MAX_MESSAGE_BYTES) return `message of ${bytes} bytes (over ${MAX_MESSAGE_BYTES}): ${message.slice(0, 200)}...`;
  for (const p of parts) if (!message.includes(p)) return `message lacks '${p}': ${message.slice(0, 600)}`;
  return '';
}

/** One bad environment case: variables set beside the required ones, and the parts its problem must name. */
export type EnvCase = readonly [label: string, vars: Record<string, string>, parts: readonly string[]];

/** Bounds of the numeric variables of a schema, stated by the test (so a changed bound is seen). */
export interface EnvBounds {
  int?: readonly (readonly [name: string, min: number, max: number])[];
  number?: readonly (readonly [name: string, min: number, max: number])[];
  bool?: readonly string[];
  oneOf?: readonly (readonly [name: string, values: readonly string[]])[];
}

/**
 * The standard bad values of each stated variable: an integer/number below its minimum, above
 * its maximum (when finite) and not a number; an integer with a fraction; a boolean and a
 * choice that is neither; each naming the variable, the rule and the value.
 */
export function envCases(b: EnvBounds): EnvCase[] {
  const out: EnvCase[] = [];
  for (const [name, min, max] of b.int ?? []) {
    const rule = `${name} must be an integer in ${min}..${max}`;
    out.push([`${name} below ${min}`, { [name]: String(min - 1) }, [rule, `given '${min - 1}'`]]);
    if (Number.isSafeInteger(max + 1)) out.push([`${name} above ${max}`, { [name]: String(max + 1) }, [rule, `given '${max + 1}'`]]);
    out.push([`${name} not a number`, { [name]: 'ten' }, [rule, "given 'ten'"]]);
    out.push([`${name} with a fraction`, { [name]: `${min}.5` }, [rule, `given '${min}.5'`]]);
  }
  for (const [name, min, max] of b.number ?? []) {
    const rule = `${name} must be a number in ${min}..${max === Number.POSITIVE_INFINITY ? 'Infinity' : max}`;
    const below = min === 0 ? '-0.001' : String(min / 2 < min ? min / 2 : min - 1);
    out.push([`${name} below ${min}`, { [name]: below }, [rule, `given '${below}'`]]);
    if (Number.isFinite(max)) out.push([`${name} above ${max}`, { [name]: String(max * 2 + 1) }, [rule, `given '${max * 2 + 1}'`]]);
    out.push([`${name} NaN`, { [name]: 'NaN' }, [rule, "given 'NaN'"]]);
  }
  for (const name of b.bool ?? [])
    out.push([`${name} neither true nor false`, { [name]: 'sometimes' }, [`${name} must be true or false`, "given 'sometimes'"]]);
  for (const [name, values] of b.oneOf ?? [])
    out.push([`${name} not a choice`, { [name]: 'bogus' }, [`${name} must be one of ${values.join(', ')}`, "given 'bogus'"]]);
  return out;
}

/**
 * The rules of the variables every service reads through @tandem/service-kit (gRPC keepalive,
 * log level, TLS client authentication), for {@link envCases}.
 */
export const SERVICE_ENV_BOUNDS: EnvBounds = {
  int: [
    ['GRPC_KEEPALIVE_TIME_MS', 100, 86_400_000],
    ['GRPC_KEEPALIVE_TIMEOUT_MS', 100, 3_600_000],
  ],
  oneOf: [
    ['LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']],
    ['TLS_CLIENT_AUTH', ['none', 'require']],
  ],
};

/** The problems a config loader throws (a ConfigError's `problems`), or [] when it loads. */
export function configProblems(load: () => unknown): string[] {
  try {
    load();
  } catch (err) {
    const problems = (err as { problems?: readonly string[] }).problems;
    if (!problems) throw err;
    return [...problems];
  }
  return [];
}

/**
 * Variables of `schema` with a rule of their own (an integer or number range, true/false, a
 * choice) that none of `cases` sets: a variable added to a service without its corpus cases.
 * The rule is learnt from the variable's parser (a value none of them accepts), so the corpus
 * needs no count or list of its own to keep up to date.
 */
export function uncoveredEnvVars(schema: Readonly<Record<string, { parse(raw: string): unknown }>>, cases: readonly EnvCase[]): string[] {
  const covered = new Set(cases.flatMap(([, vars]) => Object.keys(vars)));
  return Object.entries(schema)
    .filter(([name, v]) => {
      if (covered.has(name)) return false;
      try {
        v.parse('\u0000');
        return false;
      } catch (err) {
        return /^must be (an integer in |a number in |true or false$|one of )/.test((err as Error).message);
      }
    })
    .map(([name]) => name);
}

/** What {@link envCorpusTests} checks of one service's configuration. */
export interface EnvCorpus {
  /** The service's variables: with it, one test that every variable with a rule has a case. */
  readonly schema?: Readonly<Record<string, { parse(raw: string): unknown }>>;
  readonly cases: readonly EnvCase[];
  /** Loads the configuration from the case's variables (on top of whatever the service requires). */
  load(vars: Record<string, string>): unknown;
  /** Each case must give exactly one problem (default: at least one; the first is checked). */
  readonly exactlyOne?: boolean;
  /** jest title of each case, `%s` the case's label (default `refuses %s`). */
  readonly title?: string;
}

/**
 * Defines, in the current `describe`, the env corpus tests of a service: every variable with a
 * rule has a case ({@link uncoveredEnvVars}), and each case is refused with a first problem
 * that names its parts within {@link MAX_MESSAGE_BYTES} ({@link clearMessageProblem}).
 */
export function envCorpusTests(c: EnvCorpus): void {
  const { schema } = c;
  if (schema)
    it('has a case for every variable with a rule (a range, true/false, a choice)', () => {
      expect(uncoveredEnvVars(schema, c.cases)).toEqual([]);
    });
  it.each(c.cases)(c.title ?? 'refuses %s', (_label, vars, parts) => {
    const problems = configProblems(() => c.load(vars));
    if (c.exactlyOne) expect(problems).toHaveLength(1);
    else expect(problems.length).toBeGreaterThanOrEqual(1);
    expect(clearMessageProblem(problems[0], parts)).toBe('');
  });
}
