import {
  ConfigError,
  env,
  grpcKeepaliveEnv,
  hostOf,
  loadEnv,
  metricsPortEnv,
  natsAuthEnv,
  natsAuthFrom,
  type EnvValues,
  serverSecurityEnv,
} from '@tandem/service-kit';
import { DEFAULT_CALIBRATION as C } from './calibration';
import { DEFAULT_SHED_MAX_SLOWDOWN, PLANNER_ALGORITHMS, type PlannerAlgorithm } from './plan-maker';
import { DEFAULT_LEASE_MS, DEFAULT_STATE_BUCKET, STATE_OFF } from './plan-state';
import { DEFAULT_SHEDDING as S } from './shedding';

/**
 * A request class: prompts up to `maxPromptTokens`, priced for `expectedNewTokens` output
 * tokens, with latency objectives. Invariant (checkClasses): at least one of `slaMs`,
 * `ttftMs`, `tpotMs` is stated, each finite and > 0; a plan must meet every one stated.
 */
export interface RequestClass {
  readonly name: string;
  readonly maxPromptTokens: number;
  readonly expectedNewTokens: number;
  /** SLO on the generation's end-to-end latency, ms. */
  readonly slaMs?: number;
  /** SLO on the time to first token (the prompt's prefill pass until its token is on the client), ms. */
  readonly ttftMs?: number;
  /** SLO on the time per output token after the first (one decode pass), ms. */
  readonly tpotMs?: number;
}

/** The latency objectives of a class, or an override of some of them, ms. */
export interface SloOverride {
  readonly slaMs?: number;
  readonly ttftMs?: number;
  readonly tpotMs?: number;
}

/** The objectives a class may state, in the order messages name them. */
export const CLASS_SLO_KEYS = ['slaMs', 'ttftMs', 'tpotMs'] as const;

/**
 * SLOs per client class and request class. A number is an end-to-end `slaMs` (the original
 * form); an object replaces the objectives it states and keeps the class's others.
 */
export type SlaOverrides = Readonly<Record<string, Readonly<Record<string, number | SloOverride>>>>;

export const DEFAULT_CLASSES: readonly RequestClass[] = [
  { name: 'short', maxPromptTokens: 32, expectedNewTokens: 16, slaMs: 1500 },
  { name: 'medium', maxPromptTokens: 128, expectedNewTokens: 32, slaMs: 4000 },
  { name: 'long', maxPromptTokens: 1024, expectedNewTokens: 64, slaMs: 15000 },
];

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function shown(v: unknown): string {
  const text = JSON.stringify(v) ?? String(v);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** Reads the stated objectives of `o` (each, when present, a finite number > 0). @throws Error naming `${path}.${key}`. */
function readSlos(o: Record<string, unknown>, path: string): SloOverride {
  const out: { -readonly [K in keyof SloOverride]: SloOverride[K] } = {};
  for (const k of CLASS_SLO_KEYS) {
    if (!Object.prototype.hasOwnProperty.call(o, k)) continue;
    const v = o[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || !(v > 0)) throw new Error(`${path}.${k} must be a number > 0, given ${shown(v)}`);
    out[k] = v;
  }
  return out;
}

/** Validates PLANNER_REQUEST_CLASSES; sorts classes by maxPromptTokens. */
export function checkClasses(v: unknown): RequestClass[] {
  if (!Array.isArray(v) || v.length === 0)
    throw new Error('must be a non-empty JSON array of {name, maxPromptTokens, expectedNewTokens, slaMs?, ttftMs?, tpotMs?}');
  const out = v.map((c: unknown, i): RequestClass => {
    if (!isObject(c)) throw new Error(`[${i}] must be an object`);
    if (typeof c.name !== 'string' || !/^[A-Za-z0-9_<=.-]{1,64}$/.test(c.name))
      throw new Error(`[${i}].name must be 1..64 letters, digits or _<=.-, given ${shown(c.name)}`);
    for (const k of ['maxPromptTokens', 'expectedNewTokens'] as const) {
      if (!Number.isInteger(c[k]) || (c[k] as number) < (k === 'maxPromptTokens' ? 1 : 0))
        throw new Error(`[${i}].${k} must be an integer >= ${k === 'maxPromptTokens' ? 1 : 0}, given ${shown(c[k])}`);
    }
    const slos = readSlos(c, `[${i}]`);
    if (Object.keys(slos).length === 0) throw new Error(`[${i}] must state at least one of slaMs, ttftMs, tpotMs, given ${shown(c)}`);
    return { name: c.name, maxPromptTokens: c.maxPromptTokens as number, expectedNewTokens: c.expectedNewTokens as number, ...slos };
  });
  if (new Set(out.map((c) => c.name)).size !== out.length) throw new Error('class names must be unique');
  return out.sort((a, b) => a.maxPromptTokens - b.maxPromptTokens);
}

/** Validates PLANNER_SLA_OVERRIDES: {clientClass: {requestClass: slaMs | {slaMs?, ttftMs?, tpotMs?}}}. */
export function checkOverrides(v: unknown): Record<string, Record<string, number | SloOverride>> {
  if (!isObject(v)) throw new Error('must be a JSON object {clientClass: {requestClass: slaMs or {slaMs?, ttftMs?, tpotMs?}}}');
  const out: Record<string, Record<string, number | SloOverride>> = {};
  for (const [cc, m] of Object.entries(v)) {
    if (!isObject(m)) throw new Error(`.${cc} must be an object {requestClass: slaMs or {slaMs?, ttftMs?, tpotMs?}}, given ${shown(m)}`);
    out[cc] = {};
    for (const [rc, sla] of Object.entries(m)) {
      if (isObject(sla)) {
        const slos = readSlos(sla, `.${cc}.${rc}`);
        if (Object.keys(slos).length === 0) throw new Error(`.${cc}.${rc} must state at least one of slaMs, ttftMs, tpotMs, given ${shown(sla)}`);
        out[cc][rc] = slos;
      } else if (typeof sla !== 'number' || !(sla > 0) || !Number.isFinite(sla)) {
        throw new Error(`.${cc}.${rc} must be a number > 0 (slaMs) or an object {slaMs?, ttftMs?, tpotMs?}, given ${shown(sla)}`);
      } else {
        out[cc][rc] = sla;
      }
    }
  }
  return out;
}

/** Every environment variable the planner reads, with its default. */
export const plannerEnv = {
  MODEL_DIR: env.string('Model directory: the planner reads its manifest for stage names and boundary sizes'),
  PLANNER_ADDR: env.string('gRPC listen address host:port (port 0 picks a free port)', '127.0.0.1:50071'),
  PLANNER_METRICS_PORT: metricsPortEnv('PLANNER_ADDR'),
  PLANNER_DASHBOARD_PORT: env.optionalInt(
    "Port of the live dashboard (GET /, an HTML page updated by server-sent events on /events) on the host of PLANNER_ADDR; 0 picks a free port (logged and printed); unset: no dashboard. Plain HTTP without tokens: it shows every client's plan, so with AUTH_TOKENS_FILE the host must be a loopback address",
    0,
    65_535,
  ),
  ...serverSecurityEnv,
  ...grpcKeepaliveEnv,
  NATS_URL: env.string('NATS server carrying the telemetry', 'nats://127.0.0.1:4222'),
  ...natsAuthEnv,
  PLANNER_ALGORITHM: env.oneOf(
    'Placement algorithm: the contract\'s (dp, dp-grid and the baselines) or dp-phased, which may place the prefill and the decode apart, handing the KV caches of the stages that change side over once between the phases (docs/placement.md, "Prefill and decode placed apart")',
    'dp' as PlannerAlgorithm,
    PLANNER_ALGORITHMS,
  ),
  PLANNER_REQUEST_CLASSES: env.json(
    'Request classes (JSON array of {name, maxPromptTokens, expectedNewTokens, slaMs?, ttftMs?, tpotMs?}): each states at least one SLO, ms (end to end, time to first token, time per output token) and a plan must meet every one stated',
    DEFAULT_CLASSES as RequestClass[],
    checkClasses,
  ),
  PLANNER_SLA_OVERRIDES: env.json(
    'SLOs per client class (JSON {clientClass: {requestClass: slaMs or {slaMs?, ttftMs?, tpotMs?}}}); each stated objective replaces the class default, the others stay',
    {} as Record<string, Record<string, number | SloOverride>>,
    checkOverrides,
  ),
  PLANNER_PHASED_MIN_SAVING: env.number(
    "PLANNER_ALGORITHM=dp-phased: a plan whose prefill and decode are placed apart is chosen only when it saves at least this fraction of the server work of the best single placement meeting the SLOs (0: any saving; the hand-over's own server work is priced from the executor's fitted overhead, this is a margin on top)",
    0,
    0,
    1,
  ),
  PLANNER_HYSTERESIS: env.number('A feasible plan is replaced only when the new one saves more than this fraction of its server work', 0.05, 0, 1),
  PLANNER_ENTRY_MARGIN: env.number(
    'A plan not in force is taken only when it meets its SLOs with this fraction of them to spare; the plan in force is kept while it meets them at all',
    0.05,
    0,
    0.5,
  ),
  PLANNER_SLA_MARGIN: env.number(
    'Plan against this fraction of each SLO (E2E, TTFT and TPOT alike), leaving headroom for noise (1 = the full SLO)',
    0.9,
    0.1,
    1,
  ),
  PLANNER_RESOLUTION_MS: env.number('Time step of dp-grid, ms', 0.5, 0.001),
  PLANNER_SERVER_ENTRY_MS: env.number(
    "Server work of one hand-over to the server (one step: gRPC, protobuf, scheduling), ms, used until the executor's own fitted overhead (its load report's `overhead`, measured from its CPU and traffic) rests on 10 busy telemetry intervals",
    0.6,
    0,
  ),
  PLANNER_MAX_UTILISATION: env.number('Cap on the server utilisation used to inflate its stage times by 1/(1-u)', 0.9, 0, 0.99),
  PLANNER_SERVER_LATENCY: env.oneOf(
    "How server latency under load is priced: 'stretch' (the executor's measured slow-down of its steps, ServerLoad.decode_stretch etc., when it reports one) or 'mm1' (stage times x 1/(1-u), the M/M/1 mean)",
    'stretch',
    ['stretch', 'mm1'],
  ),
  PLANNER_IDLE_UTILISATION: env.number(
    'Below this (smoothed) server utilisation plans minimise latency: the server has capacity to spare, so requests get the placement that best meets their SLOs; at or above it they minimise server work under the SLOs (the throughput objective); back to latency only when the measured utilisation and the one all-server plans would cause at the request rates the outcomes show are both below half of it (so moving the fleet back does not saturate the server and flip it again); 0 (the default) always minimises work: the server does only what the SLOs force it to',
    0,
    0,
    1,
  ),
  PLANNER_UTILISATION_SMOOTHING: env.number(
    "Weight of each load report in the moving averages the planner prices and chooses its objective by: utilisation, queue wait, stage times and the executor's measured stretch (1 = the last report alone)",
    0.1,
    0.01,
    1,
  ),
  PLANNER_CLIENT_TTL_MS: env.int(
    'A client not heard from for this long is forgotten (its stream stays open); an executor silent this long is no longer followed: the next one to report is planned from',
    60_000,
    1000,
    86_400_000,
  ),
  PLANNER_DEBOUNCE_MS: env.int('Telemetry is folded into one re-plan per this many ms', 50, 0, 60_000),
  PLANNER_REPLAN_THRESHOLD: env.number(
    'Telemetry re-plans a client only when a priced figure (stage time, link, load-inflated server time) moved by more than this fraction since its last plan',
    0.02,
    0,
    1,
  ),
  PLANNER_PREDICTION_PUSH_THRESHOLD: env.number(
    "A re-plan that keeps a client's placements sends it the new predictions when one (TTFT, TPOT, end-to-end) moved by more than this fraction since it last got them; its outcomes are judged against them",
    0.1,
    0,
    100,
  ),
  PLANNER_SLICE_MS: env.int('A re-plan yields to the event loop after this many ms, so health and plan streams stay responsive', 10, 1, 1000),
  PLANNER_LEARN: env.bool(
    "Learn from the agents' GenerationOutcome telemetry: scale predictions by the observed error and tighten plans that miss PLANNER_SLO_TARGET (docs/planner.md); false only observes (`tandem plans` still shows the figures)",
    C.learn,
  ),
  PLANNER_SLO_TARGET: env.number(
    "SLO attainment each client's plan must reach per request class; below it (with PLANNER_OUTCOME_MIN outcomes) the class is planned against a tighter SLA until the plan changes",
    C.target,
    0.01,
    1,
  ),
  PLANNER_SLO_RELAX_MARGIN: env.number(
    'A tightened class relaxes one step only while its attainment is at least PLANNER_SLO_TARGET plus this',
    C.relaxMargin,
    0,
    0.5,
  ),
  PLANNER_OUTCOME_HALF_LIFE: env.number('Half-life, in outcomes, of the decayed prediction error and attainment', C.halfLife, 1, 100_000),
  PLANNER_OUTCOME_MIN: env.int(
    "Outcomes needed before a class's prediction is corrected or its plan judged (fewer: the model's prediction stands)",
    C.minOutcomes,
    1,
    100_000,
  ),
  PLANNER_SAFETY_STEP: env.number('Each tighten step multiplies the safety factor on the SLA by this; a relax step divides by it', C.step, 0.1, 0.99),
  PLANNER_SAFETY_FLOOR: env.number('Lowest safety factor; the next tighten step places the class all-server', C.floor, 0.01, 1),
  PLANNER_SAFETY_DWELL_MS: env.int('A placement stays in force at least this long before it may be tightened, ms', C.dwellMs, 0, 86_400_000),
  PLANNER_SAFETY_RELAX_MS: env.int(
    'Time since the last change before a relax step, ms (doubled after each relax that had to be undone, up to 16x)',
    C.relaxDwellMs,
    0,
    86_400_000,
  ),
  PLANNER_CALIBRATION_CHANGE: env.number(
    'The correction factor in force follows the observed prediction error (and the client is re-planned) when they differ by more than this fraction, up after PLANNER_SAFETY_DWELL_MS, down like a relax step',
    C.materialChange,
    0,
    10,
  ),
  PLANNER_CALIBRATE_BY_KIND: env.bool(
    'Also correct predicted TTFT and TPOT per kind of placement (all-server, split, all-device), each kind by its own outcomes, so that a split whose outcomes run slower than predicted gives way to a plan that meets the SLOs (docs/planner.md)',
    C.byKind,
  ),
  PLANNER_SHED: env.bool(
    "Shed while the server is overloaded (objective algorithms): at or above PLANNER_SHED_ABOVE utilisation, move the fewest classes whose plans miss their SLOs to their least-server-work plans, most work saved per request first, until the work they free at their request rates brings the server to PLANNER_SHED_BELOW; give them back, last first, when it is there with room for them (docs/planner.md, 'Overload'). Other classes keep the plan that meets their SLOs at no load. false: every class missing its SLOs goes to its fastest placement at the load",
    S.enabled,
  ),
  PLANNER_SHED_ABOVE: env.number('Server utilisation (averaged over a few load reports) at or above which the planner sheds classes', S.above, 0.05, 1),
  PLANNER_SHED_BELOW: env.number(
    'Server utilisation shedding aims for, and below which shed classes come back; must be below PLANNER_SHED_ABOVE',
    S.below,
    0.01,
    0.99,
  ),
  PLANNER_SHED_MAX_SLOWDOWN: env.number(
    "A shed class gets the least-server-work plan that answers within this many times each of its SLOs; a class no plan serves within that is never shed (so a shed request is late, not lost to its caller's deadline)",
    DEFAULT_SHED_MAX_SLOWDOWN,
    1,
    100,
  ),
  PLANNER_SHED_DWELL_MS: env.int('Time after a shed or a give-back before the next, ms (so the load reports see its effect)', S.dwellMs, 0, 3_600_000),
  PLANNER_STATE_BUCKET: env.pattern(
    `NATS JetStream key-value bucket holding each client's current plan and the epoch counter (the NATS server needs JetStream: nats-server -js): a restarted planner continues the stored plans and epochs, and planners sharing the bucket elect one leader (lease in \`<bucket>-leader\`) while the others serve its plans (docs/planner.md, "State and failover"); '${STATE_OFF}': plans in memory only`,
    DEFAULT_STATE_BUCKET,
    /^[A-Za-z0-9_-]{1,200}$/,
    `a bucket name of 1..200 letters, digits, _ or -, or '${STATE_OFF}'`,
  ),
  PLANNER_LEADER_LEASE_MS: env.int(
    "Leader lease, ms: the leader renews it every quarter of it and stands by when no renewal went through for 7/8 of it; a standby takes over when the lease has not been renewed for a whole lease (within about 1.5 leases of the leader's death; at once when a leader stops cleanly)",
    DEFAULT_LEASE_MS,
    200,
    600_000,
  ),
  LOG_LEVEL: env.oneOf('pino log level', 'info', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
};

export type PlannerConfig = EnvValues<typeof plannerEnv>;

/**
 * Reads the planner's configuration.
 * @throws ConfigError listing every problem, including `dp-grid` (which bounds one latency)
 *   with a class or override stating `ttftMs` or `tpotMs`.
 */
export function loadConfig(source: Readonly<Record<string, string | undefined>>): PlannerConfig {
  const config = loadEnv(plannerEnv, source);
  const problems: string[] = [];
  if (config.PLANNER_ALGORITHM === 'dp-grid') {
    const states = (o: RequestClass | SloOverride | number): boolean => typeof o === 'object' && (o.ttftMs !== undefined || o.tpotMs !== undefined);
    config.PLANNER_REQUEST_CLASSES.forEach((c) => {
      if (states(c))
        problems.push(
          `PLANNER_REQUEST_CLASSES class ${JSON.stringify(c.name)} states ttftMs or tpotMs, which PLANNER_ALGORITHM=dp-grid cannot bound (it bounds slaMs only); use dp`,
        );
    });
    for (const [cc, m] of Object.entries(config.PLANNER_SLA_OVERRIDES)) {
      for (const [rc, o] of Object.entries(m))
        if (states(o))
          problems.push(
            `PLANNER_SLA_OVERRIDES.${cc}.${rc} states ttftMs or tpotMs, which PLANNER_ALGORITHM=dp-grid cannot bound (it bounds slaMs only); use dp`,
          );
    }
  }
  if (config.PLANNER_SLO_TARGET + config.PLANNER_SLO_RELAX_MARGIN > 1 + 1e-9) {
    problems.push(
      `PLANNER_SLO_TARGET + PLANNER_SLO_RELAX_MARGIN must be at most 1 (else a tightened class never relaxes), given ${config.PLANNER_SLO_TARGET} + ${config.PLANNER_SLO_RELAX_MARGIN}`,
    );
  }
  if (config.PLANNER_SHED_BELOW >= config.PLANNER_SHED_ABOVE) {
    problems.push(
      `PLANNER_SHED_BELOW must be below PLANNER_SHED_ABOVE (else shedding and giving back would flap), given ${config.PLANNER_SHED_BELOW} and ${config.PLANNER_SHED_ABOVE}`,
    );
  }
  const dashboard = config.PLANNER_DASHBOARD_PORT;
  if (dashboard !== undefined && dashboard !== 0 && dashboard === config.PLANNER_METRICS_PORT) {
    problems.push(`PLANNER_DASHBOARD_PORT must differ from PLANNER_METRICS_PORT (each serves its own HTTP endpoint), given ${dashboard} for both`);
  }
  if (dashboard !== undefined && config.AUTH_TOKENS_FILE && !isLoopback(hostOf(config.PLANNER_ADDR))) {
    problems.push(
      `PLANNER_DASHBOARD_PORT with AUTH_TOKENS_FILE needs PLANNER_ADDR on a loopback host (the dashboard has no tokens and shows every client's plan, which ListPlans shows only to operator tokens), given host '${hostOf(config.PLANNER_ADDR)}'`,
    );
  }
  if (problems.length) throw new ConfigError(problems);
  natsAuthFrom(config);
  return config;
}

/** Whether `host` (as hostOf gives it) is a loopback address or name. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}
