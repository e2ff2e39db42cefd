import { ID_PATTERN, Subjects, type ClientProfile, type ServerLoad, type StageTiming, type StepQueueWaits } from '@tandem/protocol';

/** ServerLoad's stretches, one per kind of step. */
export const STRETCH_KINDS = ['decodeStretch', 'promptStretch', 'longPromptStretch', 'splitDecodeStretch'] as const satisfies readonly (keyof ServerLoad)[];

/** The kinds of step ServerLoad.queue_waits states a wait for. */
export const QUEUE_KINDS = ['decodeMs', 'promptMs', 'longPromptMs', 'splitDecodeMs'] as const satisfies readonly (keyof StepQueueWaits)[];

/**
 * The plausible range of every number the planner takes from telemetry (ClientProfile and
 * ServerLoad over NATS). A message with a figure outside its range is dropped whole, with a
 * reason naming the field, the rule and the value, and counted by reason: the planner prices
 * plans from these figures (prompt tokens × stage time × queueing inflation, summed over
 * stages and passes), and within these bounds every such product stays finite, so one
 * message can never bring an Infinity or NaN into the cost model.
 */
export const TELEMETRY_LIMITS = {
  /** A stage's prefill time per prompt token and decode time, ms: at most one minute (a device that slow runs nothing). */
  maxStageMs: 60_000,
  /** One-way link latency, ms: at most one minute. */
  maxLinkLatencyMs: 60_000,
  /**
   * Link throughput, bytes/ms: at least 0.001 (1 byte/s; 0 is refused: a link that moves
   * nothing cannot carry a split, and a link not measured is left out of the message, which
   * prices it as {@link UNMEASURED_LINK_BYTES_PER_MS}) and at most 1e9 (1 TB/s, beyond any network).
   */
  minLinkBytesPerMs: 0.001,
  maxLinkBytesPerMs: 1e9,
  /** Mean queue wait in a load report, ms: at most one day. */
  maxQueueMs: 86_400_000,
  /** Each coefficient of the executor's fitted overhead (ms per message, per KiB, idle ms per s): at most 1000. */
  maxOverheadMs: 1000,
  /** A measured stretch (decode, prompt, long prompt): 0 (not measured) or 1..1000. */
  maxStretch: 1000,
  /** The executor's long-step threshold, positions: at most 2^20. */
  maxLongStepTokens: 1 << 20,
  /** Length of a client class name. */
  maxClientClassLength: 64,
  /** Length of a model id. */
  maxModelIdLength: 128,
  /** Length of an executor's advertised address (ServerLoad.address, host:port). */
  maxAddressLength: 255,
} as const;

/**
 * An executor's advertised address: host:port, the host a DNS name, an IPv4 address or an IPv6
 * address in brackets, the port 1..65535 (checked apart).
 */
const ADDRESS_PATTERN = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*|\[[0-9A-Fa-f:.]{2,45}\]):(\d{1,5})$/;

/** Whether `address` is host:port as ServerLoad.address must be (port 1..65535). */
export function isExecutorAddress(address: string): boolean {
  const m = ADDRESS_PATTERN.exec(address);
  const port = m ? Number(m[1]) : 0;
  return address.length <= TELEMETRY_LIMITS.maxAddressLength && port >= 1 && port <= 65535;
}

/** Throughput a link direction absent from a ClientProfile is priced at, bytes/ms (1 GB/s: as good as local). */
export const UNMEASURED_LINK_BYTES_PER_MS = 1e6;

/** A value cut short for an error message (long strings would make a reason of kilobytes). */
export function shown(v: unknown): string {
  const s = typeof v === 'string' ? `'${v}'` : String(v);
  return s.length > 48 ? `${s.slice(0, 45)}...` : s;
}

/**
 * A telemetry message the planner refuses. `reason` is the key it is counted under: the
 * message type, the field with indices left out, and the rule (e.g.
 * `ClientProfile.stages[].decodeMs:range`).
 */
export class TelemetryError extends Error {
  override readonly name = 'TelemetryError';
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(message);
  }
}

function fail(type: string, field: string, rule: string, text: string, value: unknown): never {
  throw new TelemetryError(`${type}.${field} ${text}, given ${shown(value)}`, `${type}.${field.replace(/\[\d+\]/g, '[]')}:${rule}`);
}

/** `v` in lo..hi (inclusive), finite. */
function inRange(type: string, field: string, v: number, lo: number, hi: number, unit: string): void {
  if (!Number.isFinite(v) || v < lo || v > hi) fail(type, field, 'range', `must be a finite number in ${lo}..${hi}${unit}`, v);
}

function modelId(type: string, id: string, expected: string): void {
  if (id.length === 0) fail(type, 'modelId', 'required', 'must name the model (it is empty)', id);
  if (id.length > TELEMETRY_LIMITS.maxModelIdLength) fail(type, 'modelId', 'length', `must be at most ${TELEMETRY_LIMITS.maxModelIdLength} characters`, id);
  if (expected && id !== expected) fail(type, 'modelId', 'model', `must be ${shown(expected)} (the model this planner plans for)`, id);
}

/**
 * The sender's id, field `field` (the id pattern, and over NATS its own subject `subjectOf(id)`),
 * and the message's model id.
 */
function sender(type: string, field: string, id: string, subjectOf: (id: string) => string, model: string, ctx: TelemetryContext): void {
  if (!ID_PATTERN.test(id)) fail(type, field, 'pattern', `must match ${ID_PATTERN}`, id);
  if (ctx.subject !== undefined && ctx.subject !== subjectOf(id)) fail(type, field, 'subject', `must match the subject ${shown(ctx.subject)}`, id);
  modelId(type, model, ctx.modelId);
}

/** The figures of one StageTiming, named `${field}.prefillMsPerToken` etc. */
function stageTimes(type: string, field: string, s: StageTiming): void {
  for (const k of ['prefillMsPerToken', 'decodeMs'] as const) inRange(type, `${field}.${k}`, s[k], 0, TELEMETRY_LIMITS.maxStageMs, ' ms');
  for (const k of ['prefillFixedMs', 'prefillMsPerTokenFitted', 'decodeFixedMs', 'decodeMsPerContextToken'] as const) {
    const v = s[k];
    if (v !== undefined) inRange(type, `${field}.${k}`, v, 0, TELEMETRY_LIMITS.maxStageMs, ' ms');
  }
}

/** What a telemetry message is checked against. */
export interface TelemetryContext {
  /** Stages of the planned model. */
  readonly stageCount: number;
  /** Id of the planned model; empty accepts any (non-empty) id. */
  readonly modelId: string;
  /** The NATS subject the message came on, when it came over NATS: it must be the sender's own. */
  readonly subject?: string;
}

/**
 * Checks a ClientProfile against the limits above: the client id (and its subject), a model id
 * (required), the client class, each listed stage once, in range, and each link direction
 * that is present.
 * @throws TelemetryError naming the field, the rule and the value given (cut short).
 */
export function validateProfile(p: ClientProfile, ctx: TelemetryContext): void {
  const T = 'ClientProfile';
  sender(T, 'clientId', p.clientId, Subjects.clientProfile, p.modelId, ctx);
  if (p.clientClass.length > TELEMETRY_LIMITS.maxClientClassLength)
    fail(T, 'clientClass', 'length', `must be at most ${TELEMETRY_LIMITS.maxClientClassLength} characters`, p.clientClass);
  const seen = new Set<number>();
  for (const [i, s] of p.stages.entries()) {
    if (s.stage >= ctx.stageCount) fail(T, `stages[${i}].stage`, 'range', `must be in 0..${ctx.stageCount - 1}`, s.stage);
    if (seen.has(s.stage)) fail(T, `stages[${i}].stage`, 'unique', 'must list each stage once', s.stage);
    seen.add(s.stage);
    stageTimes(T, `stages[${i}]`, s);
  }
  for (const k of ['uplink', 'downlink'] as const) {
    const l = p[k];
    if (!l) continue;
    inRange(T, `${k}.latencyMs`, l.latencyMs, 0, TELEMETRY_LIMITS.maxLinkLatencyMs, ' ms');
    if (!(l.bytesPerMs > 0)) fail(T, `${k}.bytesPerMs`, 'positive', `must be > 0 (leave the ${k} out when it is not measured)`, l.bytesPerMs);
    inRange(T, `${k}.bytesPerMs`, l.bytesPerMs, TELEMETRY_LIMITS.minLinkBytesPerMs, TELEMETRY_LIMITS.maxLinkBytesPerMs, ' bytes/ms');
  }
  if (p.stepOverheadMs !== undefined) inRange(T, 'stepOverheadMs', p.stepOverheadMs, 0, TELEMETRY_LIMITS.maxLinkLatencyMs, ' ms');
}

/**
 * Checks a ServerLoad against the limits above: the server id (and its subject), a model id
 * (required), every stage in order and in range, the whole-model figures, utilisation, queue
 * wait, stretches, overhead, and the advertised address when there is one (host:port).
 * @throws TelemetryError naming the field, the rule and the value given (cut short).
 */
export function validateLoad(l: ServerLoad, ctx: TelemetryContext): void {
  const T = 'ServerLoad';
  sender(T, 'serverId', l.serverId, Subjects.serverLoad, l.modelId, ctx);
  const n = ctx.stageCount;
  if (l.stages.length !== n) fail(T, 'stages', 'count', `must list all ${n} stages`, `${l.stages.length} stages`);
  for (const [i, s] of l.stages.entries()) {
    if (s.stage !== i) fail(T, `stages[${i}].stage`, 'order', `must be ${i}`, s.stage);
    stageTimes(T, `stages[${i}]`, s);
  }
  if (l.wholeModel) stageTimes(T, 'wholeModel', l.wholeModel);
  inRange(T, 'utilisation', l.utilisation, 0, 1, '');
  inRange(T, 'meanQueueMs', l.meanQueueMs, 0, TELEMETRY_LIMITS.maxQueueMs, ' ms');
  if (l.queueWaits) for (const k of QUEUE_KINDS) inRange(T, `queueWaits.${k}`, l.queueWaits[k], 0, TELEMETRY_LIMITS.maxQueueMs, ' ms');
  for (const k of STRETCH_KINDS) {
    const v = l[k] ?? 0;
    if (v !== 0) inRange(T, k, v, 1, TELEMETRY_LIMITS.maxStretch, ' (or 0: not measured)');
  }
  inRange(T, 'longStepTokens', l.longStepTokens, 0, TELEMETRY_LIMITS.maxLongStepTokens, ' positions');
  if (l.address !== undefined && l.address !== '') {
    if (l.address.length > TELEMETRY_LIMITS.maxAddressLength)
      fail(T, 'address', 'length', `must be at most ${TELEMETRY_LIMITS.maxAddressLength} characters`, l.address);
    if (!isExecutorAddress(l.address)) fail(T, 'address', 'pattern', 'must be host:port (a DNS name, IPv4 or [IPv6] host, port 1..65535), or empty', l.address);
  }
  if (l.overhead) {
    for (const k of ['msPerMessageIn', 'msPerMessageOut', 'msPerKibIn', 'msPerKibOut', 'idleMsPerS'] as const) {
      inRange(T, `overhead.${k}`, l.overhead[k], 0, TELEMETRY_LIMITS.maxOverheadMs, '');
    }
  }
}
