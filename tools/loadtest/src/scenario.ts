import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SLO_KEYS, type Slo, type SloKey } from '@tandem/dp';

/** The placement policies a load test compares: the planner's algorithm, switched between runs. */
export const POLICIES = ['server-only', 'greedy', 'prefix', 'dp', 'greedy-ratio', 'dp-phased'] as const;
/**
 * The policies a run compares when none are named: every policy but `greedy-ratio` and
 * `dp-phased` (prefill and decode placed apart, the KV caches handed over), which are asked for by name.
 */
export const DEFAULT_POLICIES: readonly Policy[] = ['server-only', 'greedy', 'prefix', 'dp'];
export type Policy = (typeof POLICIES)[number];

/** An emulated network link between a device class and the server. */
export interface LinkSpec {
  /** One-way latency added to every transfer, ms. */
  readonly latencyMs: number;
  /** Uplink throughput, bytes/ms (0 = not limited). */
  readonly upBytesPerMs: number;
  /** Downlink throughput, bytes/ms (0 = not limited). */
  readonly downBytesPerMs: number;
}

/** A kind of device; one client-agent process serves every simulated device of the class. */
export interface DeviceClass {
  readonly name: string;
  /** Share of the arrivals coming from this class (relative weight > 0). */
  readonly weight: number;
  /** Each local stage is padded to this many times its measured time (AGENT_SLOWDOWN). */
  readonly slowdown: number;
  readonly link: LinkSpec;
  /** The devices keep their token ids and text (AGENT_PRIVATE): plans keep the first and last stage on them. */
  readonly private: boolean;
}

/** A closed integer range, both ends included. */
export interface IntRange {
  readonly min: number;
  readonly max: number;
}

/**
 * A request's latency objectives are libs/dp's `Slo` (at least one stated). A request is good
 * (counts in goodput) when it completed and meets every stated one (vLLM's and DistServe's
 * goodput). Scenario files and the planner's configuration call the end-to-end one `slaMs`.
 */
const FILE_KEY: Readonly<Record<SloKey, string>> = { ttftMs: 'ttftMs', tpotMs: 'tpotMs', e2eMs: 'slaMs' };
/** The SLO keys of a scenario file, in report order. */
const FILE_KEYS: readonly string[] = SLO_KEYS.map((k) => FILE_KEY[k]);

/**
 * A kind of request in the traffic (the planner's RequestClass is made from it: plannerSloEnv).
 * Prompt ranges of the classes must not overlap: the planner picks a class by prompt length.
 */
export interface TrafficClass extends Slo {
  readonly name: string;
  readonly weight: number;
  /** Prompt length, tokens, uniform in [min, max]. */
  readonly promptTokens: IntRange;
  /** Generated tokens, uniform in [min, max]. */
  readonly outputTokens: IntRange;
  /** Distinct prompts of the class: requests draw theirs from this pool (recorded for replay). */
  readonly promptPool: number;
}

/**
 * How emulated devices run their stages: `replay` (default) from a recording made before the
 * measured runs (see docs/loadtest.md), `compute` by running them (every device sharing one core).
 */
export type Emulation = 'replay' | 'compute';

export type ArrivalSpec =
  | { readonly process: 'poisson' }
  /** Gamma inter-arrival times with this coefficient of variation (1 = Poisson, > 1 burstier). */
  | { readonly process: 'gamma'; readonly cv: number };

/** The sweep settings a `--quick` run uses instead of the full ones. */
export interface QuickSpec {
  readonly rates: readonly number[];
  readonly durationS: number;
  readonly warmupS: number;
}

/** A load-test scenario (docs/loadtest.md). */
export interface Scenario {
  readonly description: string;
  readonly seed: number;
  readonly preset: string;
  readonly deviceClasses: readonly DeviceClass[];
  readonly requestClasses: readonly TrafficClass[];
  /** SLOs per device class and request class; each stated key replaces the request class's. */
  readonly slaOverrides: Readonly<Record<string, Readonly<Record<string, Slo>>>>;
  readonly emulation: Emulation;
  readonly arrival: ArrivalSpec;
  /** Arrival rates to sweep, requests/s, ascending. */
  readonly rates: readonly number[];
  /** Length of the arrival trace at each rate, s. */
  readonly durationS: number;
  /** Light traffic before each policy's first rate (not measured), s. */
  readonly warmupS: number;
  /** A request not finished this long after it was sent is cancelled and counted as DEADLINE_EXCEEDED. */
  readonly requestTimeoutMs: number;
  /** Fraction of requests that must meet their SLA for a rate to count as sustained. */
  readonly slaTarget: number;
  readonly quick: QuickSpec;
  /**
   * The SLOs (request classes and overrides) are stated for a machine on which the model's whole
   * token (every stage, one decode pass, uncontended) takes this long, ms: a run scales each of
   * them by recorded / this ({@link sloScale}), so a scenario whose SLOs are set against the
   * model's speed (a device that meets a TPOT alone, another that needs the server) keeps its
   * meaning on a slower or faster machine. Needs replay emulation (the recording measures it).
   * Absent: the SLOs are absolute.
   */
  readonly sloReferenceTokenMs?: number;
}

/** A scenario file that breaks a rule: `tandem loadtest` exits 2 with this message (field, rule, value). */
export class ScenarioError extends Error {
  override name = 'ScenarioError';
}

const NAME = /^[A-Za-z0-9_-]{1,48}$/;
type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const show = (v: unknown): string => (v === undefined ? 'nothing' : JSON.stringify(v));

function fail(field: string, rule: string, value: unknown): never {
  throw new ScenarioError(`scenario ${field} must ${rule}, given ${show(value)}`);
}

function obj(v: unknown, field: string): Obj {
  if (!isObj(v)) fail(field, 'be an object', v);
  return v;
}

function num(o: Obj, key: string, field: string, opts: { min?: number; max?: number; gt?: number; int?: boolean; def?: number } = {}): number {
  const v = o[key] ?? opts.def;
  const f = field ? `${field}.${key}` : key;
  const rule = [
    opts.int ? 'be an integer' : 'be a number',
    opts.gt !== undefined ? `> ${opts.gt}` : opts.min !== undefined ? `>= ${opts.min}` : '',
    opts.max !== undefined ? `and <= ${opts.max}` : '',
  ]
    .filter(Boolean)
    .join(' ');
  if (typeof v !== 'number' || !Number.isFinite(v)) fail(f, rule, v);
  if (opts.int && !Number.isInteger(v)) fail(f, rule, v);
  if (opts.gt !== undefined && !(v > opts.gt)) fail(f, rule, v);
  if (opts.min !== undefined && v < opts.min) fail(f, rule, v);
  if (opts.max !== undefined && v > opts.max) fail(f, rule, v);
  return v;
}

function name(o: Obj, field: string): string {
  const v = o.name;
  if (typeof v !== 'string' || !NAME.test(v)) fail(`${field}.name`, 'be 1..48 letters, digits, - or _', v);
  return v;
}

function range(o: Obj, key: string, field: string, min: number, max: number): IntRange {
  const r = obj(o[key], `${field}.${key}`);
  const lo = num(r, 'min', `${field}.${key}`, { int: true, min, max });
  const hi = num(r, 'max', `${field}.${key}`, { int: true, min: lo, max });
  return { min: lo, max: hi };
}

function rates(v: unknown, field: string): number[] {
  if (!Array.isArray(v) || v.length === 0) fail(field, 'be a non-empty array of rates (requests/s)', v);
  v.forEach((r, i) => {
    if (typeof r !== 'number' || !(r > 0) || r > 10_000) fail(`${field}[${i}]`, 'be a number > 0 and <= 10000', r);
  });
  const sorted = [...(v as number[])].sort((a, b) => a - b);
  if (new Set(sorted).size !== sorted.length) fail(field, 'hold distinct rates', v);
  return sorted;
}

const SLO_MAX_MS = 3_600_000;

/** The SLOs stated in `o` under their file keys (each > 0); `need` requires at least one. */
function sloOf(o: Obj, field: string, need: boolean): Slo {
  const out: { -readonly [K in SloKey]?: number } = {};
  for (const k of SLO_KEYS) if (o[FILE_KEY[k]] !== undefined) out[k] = num(o, FILE_KEY[k], field, { gt: 0, max: SLO_MAX_MS });
  if (need && Object.keys(out).length === 0) fail(field, 'state at least one SLO: ttftMs, tpotMs or slaMs (ms)', 'none of them');
  return out;
}

const KNOWN = new Set([
  '$comment',
  'description',
  'seed',
  'preset',
  'deviceClasses',
  'requestClasses',
  'slaOverrides',
  'emulation',
  'arrival',
  'rates',
  'durationS',
  'warmupS',
  'requestTimeoutMs',
  'slaTarget',
  'quick',
  'sloReferenceTokenMs',
]);

/**
 * Checks a parsed scenario file and fills the defaults.
 * @throws ScenarioError naming the first bad field, the rule and the value given.
 */
export function validateScenario(raw: unknown): Scenario {
  const o = obj(raw, '(top level)');
  for (const k of Object.keys(o))
    if (!KNOWN.has(k)) fail(k, `be one of the known fields (${[...KNOWN].filter((x) => x !== '$comment').join(', ')})`, 'an unknown field');
  const description = typeof o.description === 'string' ? o.description : '';
  const seed = num(o, 'seed', '', { int: true, min: 0, max: 2 ** 32 - 1, def: 1 });
  const preset = o.preset ?? 'small';
  if (typeof preset !== 'string' || !/^[a-z0-9-]+$/.test(preset)) fail('preset', 'be a model preset name such as small or tiny', preset);

  if (!Array.isArray(o.deviceClasses) || o.deviceClasses.length === 0 || o.deviceClasses.length > 16)
    fail('deviceClasses', 'be an array of 1..16 device classes', o.deviceClasses);
  const deviceClasses = o.deviceClasses.map((d: unknown, i: number): DeviceClass => {
    const f = `deviceClasses[${i}]`;
    const dc = obj(d, f);
    const link = obj(dc.link ?? {}, `${f}.link`);
    if (dc.private !== undefined && typeof dc.private !== 'boolean') fail(`${f}.private`, 'be true or false', dc.private);
    return {
      private: dc.private === true,
      name: name(dc, f),
      weight: num(dc, 'weight', f, { gt: 0, def: 1 }),
      slowdown: num(dc, 'slowdown', f, { min: 1, max: 1000, def: 1 }),
      link: {
        latencyMs: num(link, 'latencyMs', `${f}.link`, { min: 0, max: 10_000, def: 0 }),
        upBytesPerMs: num(link, 'upBytesPerMs', `${f}.link`, { min: 0, def: 0 }),
        downBytesPerMs: num(link, 'downBytesPerMs', `${f}.link`, { min: 0, def: 0 }),
      },
    };
  });
  if (new Set(deviceClasses.map((d) => d.name)).size !== deviceClasses.length)
    fail(
      'deviceClasses',
      'have unique names',
      deviceClasses.map((d) => d.name),
    );

  if (!Array.isArray(o.requestClasses) || o.requestClasses.length === 0 || o.requestClasses.length > 16)
    fail('requestClasses', 'be an array of 1..16 request classes', o.requestClasses);
  const requestClasses = o.requestClasses.map((r: unknown, i: number): TrafficClass => {
    const f = `requestClasses[${i}]`;
    const rc = obj(r, f);
    const known = ['name', 'weight', 'promptTokens', 'outputTokens', 'promptPool', ...FILE_KEYS];
    for (const k of Object.keys(rc)) if (!known.includes(k)) fail(`${f}.${k}`, `be one of the known fields (${known.join(', ')})`, 'an unknown field');
    return {
      name: name(rc, f),
      weight: num(rc, 'weight', f, { gt: 0, def: 1 }),
      promptTokens: range(rc, 'promptTokens', f, 1, 100_000),
      outputTokens: range(rc, 'outputTokens', f, 1, 100_000),
      promptPool: num(rc, 'promptPool', f, { int: true, min: 1, max: 4096, def: 16 }),
      ...sloOf(rc, f, true),
    };
  });
  if (new Set(requestClasses.map((r) => r.name)).size !== requestClasses.length)
    fail(
      'requestClasses',
      'have unique names',
      requestClasses.map((r) => r.name),
    );
  const byPrompt = [...requestClasses].sort((a, b) => a.promptTokens.max - b.promptTokens.max);
  for (let i = 1; i < byPrompt.length; i++) {
    if (byPrompt[i].promptTokens.min <= byPrompt[i - 1].promptTokens.max) {
      fail(
        `requestClasses[${requestClasses.indexOf(byPrompt[i])}].promptTokens`,
        `not overlap the prompt range of '${byPrompt[i - 1].name}' (the planner picks a class by prompt length)`,
        byPrompt[i].promptTokens,
      );
    }
  }

  const slaOverrides: Record<string, Record<string, Slo>> = {};
  for (const [dcName, m] of Object.entries(obj(o.slaOverrides ?? {}, 'slaOverrides'))) {
    if (!deviceClasses.some((d) => d.name === dcName))
      fail(`slaOverrides.${dcName}`, `name a device class (${deviceClasses.map((d) => d.name).join(', ')})`, dcName);
    const row = obj(m, `slaOverrides.${dcName}`);
    slaOverrides[dcName] = {};
    for (const rcName of Object.keys(row)) {
      if (!requestClasses.some((r) => r.name === rcName))
        fail(`slaOverrides.${dcName}.${rcName}`, `name a request class (${requestClasses.map((r) => r.name).join(', ')})`, rcName);
      const f = `slaOverrides.${dcName}.${rcName}`;
      const v = row[rcName];
      if (typeof v === 'number') slaOverrides[dcName][rcName] = { e2eMs: num(row, rcName, `slaOverrides.${dcName}`, { gt: 0, max: SLO_MAX_MS }) };
      else if (isObj(v)) {
        for (const k of Object.keys(v)) if (!FILE_KEYS.includes(k)) fail(`${f}.${k}`, `be one of ${FILE_KEYS.join(', ')}`, 'an unknown field');
        slaOverrides[dcName][rcName] = sloOf(v, f, true);
      } else fail(f, 'be an SLA in ms or an object {ttftMs?, tpotMs?, slaMs?}', v);
    }
  }

  const a = obj(o.arrival ?? { process: 'poisson' }, 'arrival');
  let arrival: ArrivalSpec;
  if (a.process === 'poisson') arrival = { process: 'poisson' };
  else if (a.process === 'gamma') arrival = { process: 'gamma', cv: num(a, 'cv', 'arrival', { gt: 0, max: 20 }) };
  else fail('arrival.process', "be 'poisson' or 'gamma'", a.process);

  const emulation = o.emulation ?? 'replay';
  if (emulation !== 'replay' && emulation !== 'compute') fail('emulation', "be 'replay' or 'compute'", emulation);
  const reference = o.sloReferenceTokenMs === undefined ? undefined : num(o, 'sloReferenceTokenMs', '', { gt: 0, max: 60_000 });
  if (reference !== undefined && emulation !== 'replay')
    fail('sloReferenceTokenMs', "come with emulation 'replay' (the recording measures the model's speed the SLOs are scaled by)", reference);
  const q = obj(o.quick ?? {}, 'quick');
  const durationS = num(o, 'durationS', '', { gt: 0, max: 86_400, def: 30 });
  const warmupS = num(o, 'warmupS', '', { min: 0, max: 3600, def: 3 });
  const sweep = rates(o.rates, 'rates');
  return {
    description,
    seed,
    preset,
    deviceClasses,
    requestClasses,
    slaOverrides,
    emulation,
    arrival,
    rates: sweep,
    durationS,
    warmupS,
    requestTimeoutMs: num(o, 'requestTimeoutMs', '', { gt: 0, max: 3_600_000, def: 30_000 }),
    slaTarget: num(o, 'slaTarget', '', { gt: 0, max: 1, def: 0.9 }),
    quick: {
      rates:
        q.rates === undefined
          ? [sweep[0], sweep[Math.floor(sweep.length / 2)], sweep[sweep.length - 1]].filter((r, i, all) => all.indexOf(r) === i)
          : rates(q.rates, 'quick.rates'),
      durationS: num(q, 'durationS', 'quick', { gt: 0, max: 86_400, def: Math.min(durationS, 8) }),
      warmupS: num(q, 'warmupS', 'quick', { min: 0, max: 3600, def: Math.min(warmupS, 1) }),
    },
    ...(reference !== undefined ? { sloReferenceTokenMs: reference } : {}),
  };
}

/**
 * The factor a run scales the scenario's SLOs by: `recordedTokenMs` (a whole token of the model,
 * as the replay recording measured it on this machine) / `sloReferenceTokenMs`; 1 when the
 * scenario states no reference or nothing was recorded.
 */
export function sloScale(s: Scenario, recordedTokenMs: number | undefined): number {
  return s.sloReferenceTokenMs !== undefined && recordedTokenMs !== undefined && recordedTokenMs > 0 ? recordedTokenMs / s.sloReferenceTokenMs : 1;
}

/** The scenario with every SLO (request classes and overrides) multiplied by `factor` > 0; `s` itself when it is 1. */
export function scaleSlos(s: Scenario, factor: number): Scenario {
  if (!(factor > 0) || !Number.isFinite(factor)) throw new RangeError(`scaleSlos: factor must be a finite number > 0, given ${String(factor)}`);
  if (factor === 1) return s;
  const scaled = <T extends Slo>(o: T): T => ({
    ...o,
    ...Object.fromEntries(SLO_KEYS.filter((k) => o[k] !== undefined).map((k) => [k, (o[k] ?? 0) * factor])),
  });
  return {
    ...s,
    requestClasses: s.requestClasses.map(scaled),
    slaOverrides: Object.fromEntries(
      Object.entries(s.slaOverrides).map(([d, row]) => [d, Object.fromEntries(Object.entries(row).map(([r, o]) => [r, scaled(o)]))]),
    ),
  };
}

/** The SLOs of a request class for a device class: the class's, each key overridden by the device class's. */
export function requestSlo(s: Scenario, device: string, request: string): Slo {
  const rc = s.requestClasses.find((r) => r.name === request);
  if (!rc)
    throw new RangeError(
      `requestSlo: request must name a request class of the scenario (${s.requestClasses.map((r) => r.name).join(', ')}), given '${request}'`,
    );
  const base: { -readonly [K in SloKey]?: number } = {};
  for (const k of SLO_KEYS) if (rc[k] !== undefined) base[k] = rc[k];
  return { ...base, ...(s.slaOverrides[device]?.[request] ?? {}) };
}

/**
 * The planner's configuration for a scenario: PLANNER_REQUEST_CLASSES entries
 * {name, maxPromptTokens, expectedNewTokens, slaMs?, ttftMs?, tpotMs?} holding only the
 * stated SLOs, and PLANNER_SLA_OVERRIDES values as a number when only slaMs is stated, else
 * {slaMs?, ttftMs?, tpotMs?}.
 */
export function plannerSloEnv(s: Scenario): { PLANNER_REQUEST_CLASSES: string; PLANNER_SLA_OVERRIDES: string } {
  const pick = (o: Slo): Record<string, number | undefined> => Object.fromEntries(SLO_KEYS.filter((k) => o[k] !== undefined).map((k) => [FILE_KEY[k], o[k]]));
  const classes = s.requestClasses.map((r) => ({
    name: r.name,
    maxPromptTokens: r.promptTokens.max,
    expectedNewTokens: Math.round((r.outputTokens.min + r.outputTokens.max) / 2),
    ...pick(r),
  }));
  const overrides = Object.fromEntries(
    Object.entries(s.slaOverrides).map(([d, row]) => [
      d,
      Object.fromEntries(
        Object.entries(row).map(([r, o]) => {
          const p = pick(o);
          return [r, Object.keys(p).length === 1 && p.slaMs !== undefined ? p.slaMs : p];
        }),
      ),
    ]),
  );
  return { PLANNER_REQUEST_CLASSES: JSON.stringify(classes), PLANNER_SLA_OVERRIDES: JSON.stringify(overrides) };
}

/** The bundled scenarios, by name (`--scenario NAME`). */
export const BUNDLED_SCENARIOS = {
  default: join(__dirname, 'default-scenario.json'),
  mobile: join(__dirname, 'mobile-scenario.json'),
  edge: join(__dirname, 'edge-scenario.json'),
  phased: join(__dirname, 'phased-scenario.json'),
  gpt2: join(__dirname, 'gpt2-scenario.json'),
} as const;

/** Path of the documented default scenario. */
export const DEFAULT_SCENARIO_PATH = BUNDLED_SCENARIOS.default;

/** A bundled scenario's path for its name, else `arg` itself (a file). */
export function scenarioPathOf(arg: string): string {
  return (BUNDLED_SCENARIOS as Record<string, string>)[arg] ?? arg;
}

/**
 * Reads and validates a scenario file (default: the shipped one).
 * @throws ScenarioError for a missing file, bad JSON or a broken rule.
 */
export function loadScenario(path: string = DEFAULT_SCENARIO_PATH): Scenario {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ScenarioError(
      `--scenario must be ${Object.keys(BUNDLED_SCENARIOS).join(', ')} or a readable file, given '${path}' (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ScenarioError(`--scenario must be JSON, given '${path}' (${(err as Error).message})`);
  }
  return validateScenario(raw);
}
