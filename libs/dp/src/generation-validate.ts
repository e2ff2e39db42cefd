import { SLO_KEYS, type GenerationInstance, type GenerationStage, type Slo, type WholeModelCost } from './generation';
import type { KvHandoverCost, PhasedInstance } from './phased';
import { InstanceValidationError, MISSING, field, isRecord, link, number, stagesOf } from './validate';

/**
 * Whether an untrusted value (parsed JSON) is meant as a generation instance rather than a
 * contract instance: it is an object with `"generation": true`, or with a `slo` field and no
 * `slaMs`. Every contract instance (which must state `slaMs`) without the marker is therefore
 * still read as one. O(1).
 */
export function isGenerationInstance(value: unknown): boolean {
  if (!isRecord(value)) return false;
  if (value.generation === true || value.phased === true) return true;
  return field(value, 'slo') !== MISSING && field(value, 'slaMs') === MISSING;
}

function integer(obj: Record<string, unknown>, key: string, path: string, min: number): number {
  const v = field(obj, key);
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new InstanceValidationError(`${path}${key}`, `must be an integer >= ${min}`, v);
  return v;
}

function optionalNumber(obj: Record<string, unknown>, key: string, path: string, positive: boolean): number | undefined {
  return field(obj, key) === MISSING ? undefined : number(obj, key, path, positive);
}

/** The optional `serverPrefillWork` and `serverDecodeWork` at `path` (of a stage or of the whole model), set on `into` when stated. */
function optionalWork(obj: Record<string, unknown>, path: string, into: { serverPrefillWork?: number; serverDecodeWork?: number }): void {
  const pw = optionalNumber(obj, 'serverPrefillWork', path, false);
  if (pw !== undefined) into.serverPrefillWork = pw;
  const dw = optionalNumber(obj, 'serverDecodeWork', path, false);
  if (dw !== undefined) into.serverDecodeWork = dw;
}

/**
 * Checks an untrusted value against the rules of a {@link GenerationInstance} and returns a
 * clean copy holding only the known fields (unknown fields are ignored). Fields are checked
 * in document order and the first broken rule is reported, naming the field with its index
 * (`stages[3].clientDecodeMs must be a finite number >= 0, given -1`).
 * @param pathPrefix prepended to field names, e.g. `[2].` for the third instance of an array.
 * @throws InstanceValidationError naming the field, the rule and the value given.
 * Complexity: O(S).
 */
export function validateGenerationInstance(value: unknown, pathPrefix = ''): GenerationInstance {
  const root = pathPrefix.endsWith('.') ? pathPrefix.slice(0, -1) : pathPrefix;
  if (!isRecord(value)) throw new InstanceValidationError(root || 'instance', 'must be an object', value);
  const marker = field(value, 'generation');
  if (marker !== MISSING && marker !== true)
    throw new InstanceValidationError(`${pathPrefix}generation`, 'must be true in a generation instance (or absent)', marker);
  const stages: GenerationStage[] = stagesOf(value, pathPrefix, (raw, name, path) => {
    const stage: { -readonly [K in keyof GenerationStage]: GenerationStage[K] } = {
      name,
      clientPrefillMs: number(raw, 'clientPrefillMs', path, false),
      serverPrefillMs: number(raw, 'serverPrefillMs', path, false),
      clientDecodeMs: number(raw, 'clientDecodeMs', path, false),
      serverDecodeMs: number(raw, 'serverDecodeMs', path, false),
      inBytesPerToken: number(raw, 'inBytesPerToken', path, false),
    };
    optionalWork(raw, path, stage);
    const kv = optionalNumber(raw, 'kvBytesPerToken', path, false);
    if (kv !== undefined) stage.kvBytesPerToken = kv;
    return stage;
  });
  const promptTokens = integer(value, 'promptTokens', pathPrefix, 1);
  const decodeSteps = integer(value, 'decodeSteps', pathPrefix, 0);
  const outBytesPerPass = number(value, 'outBytesPerPass', pathPrefix, false);
  const uplink = link(value, 'uplink', pathPrefix);
  const downlink = link(value, 'downlink', pathPrefix);
  const rawSlo = field(value, 'slo');
  if (!isRecord(rawSlo)) throw new InstanceValidationError(`${pathPrefix}slo`, 'must be an object {e2eMs?, ttftMs?, tpotMs?}', rawSlo);
  const slo: { -readonly [K in keyof Slo]: Slo[K] } = {};
  for (const k of ['e2eMs', 'ttftMs', 'tpotMs'] as const) {
    const v = optionalNumber(rawSlo, k, `${pathPrefix}slo.`, true);
    if (v !== undefined) slo[k] = v;
  }
  if (!SLO_KEYS.some((k) => slo[k] !== undefined))
    throw new InstanceValidationError(`${pathPrefix}slo`, 'must state at least one of e2eMs, ttftMs, tpotMs', rawSlo);
  const out: { -readonly [K in keyof GenerationInstance]: GenerationInstance[K] } = {
    stages,
    promptTokens,
    decodeSteps,
    outBytesPerPass,
    uplink,
    downlink,
    slo,
  };
  if (marker === true) out.generation = true;
  const entry = optionalNumber(value, 'serverEntryWork', pathPrefix, false);
  if (entry !== undefined) out.serverEntryWork = entry;
  const queue = optionalNumber(value, 'serverQueueMs', pathPrefix, false);
  if (queue !== undefined) out.serverQueueMs = queue;
  const decodeQueue = optionalNumber(value, 'serverDecodeQueueMs', pathPrefix, false);
  if (decodeQueue !== undefined) out.serverDecodeQueueMs = decodeQueue;
  const streamedQueue = optionalNumber(value, 'serverStreamedQueueMs', pathPrefix, false);
  if (streamedQueue !== undefined) out.serverStreamedQueueMs = streamedQueue;
  const decoding = field(value, 'serverDecoding');
  if (decoding !== MISSING) {
    if (typeof decoding !== 'boolean') throw new InstanceValidationError(`${pathPrefix}serverDecoding`, 'must be a boolean', decoding);
    out.serverDecoding = decoding;
  }
  const rawWhole = field(value, 'serverWholeModel');
  if (rawWhole !== MISSING) {
    const path = `${pathPrefix}serverWholeModel.`;
    if (!isRecord(rawWhole))
      throw new InstanceValidationError(
        `${pathPrefix}serverWholeModel`,
        'must be an object {serverPrefillMs, serverDecodeMs, serverPrefillWork?, serverDecodeWork?}',
        rawWhole,
      );
    const whole: { -readonly [K in keyof WholeModelCost]: WholeModelCost[K] } = {
      serverPrefillMs: number(rawWhole, 'serverPrefillMs', path, false),
      serverDecodeMs: number(rawWhole, 'serverDecodeMs', path, false),
    };
    optionalWork(rawWhole, path, whole);
    out.serverWholeModel = whole;
  }
  const res = optionalNumber(value, 'resolutionMs', pathPrefix, true);
  if (res !== undefined) out.resolutionMs = res;
  const priv = field(value, 'private');
  if (priv !== MISSING) {
    if (typeof priv !== 'boolean')
      throw new InstanceValidationError(`${pathPrefix}private`, 'must be a boolean (true keeps the first and last stage on the client)', priv);
    out.private = priv;
  }
  return out;
}

/**
 * Whether a validated-or-not value asks for phased placement (`"phased": true`). A `phased`
 * field that is present must be a boolean.
 * @throws InstanceValidationError naming `phased` otherwise. O(1).
 */
export function isPhasedInstance(value: unknown, pathPrefix = ''): boolean {
  if (!isRecord(value)) return false;
  const phased = field(value, 'phased');
  if (phased === MISSING) return false;
  if (typeof phased !== 'boolean') throw new InstanceValidationError(`${pathPrefix}phased`, 'must be a boolean (true asks for a placement per phase)', phased);
  return phased;
}

/**
 * {@link validateGenerationInstance} for an instance marked `"phased": true`: the same rules,
 * and the marker kept on the copy; besides, `kvHandover` and `serverPrefillEntryWork` (at most
 * (decodeSteps + 1) × serverEntryWork).
 * @throws InstanceValidationError naming the field, the rule and the value given. O(S).
 */
export function validatePhasedInstance(value: unknown, pathPrefix = ''): PhasedInstance {
  if (!isPhasedInstance(value, pathPrefix))
    throw new InstanceValidationError(`${pathPrefix}phased`, 'must be true in a phased instance', isRecord(value) ? field(value, 'phased') : value);
  const out: { -readonly [K in keyof PhasedInstance]: PhasedInstance[K] } = { ...validateGenerationInstance(value, pathPrefix), phased: true };
  const raw = isRecord(value) ? field(value, 'kvHandover') : MISSING;
  if (raw !== MISSING) {
    if (!isRecord(raw))
      throw new InstanceValidationError(
        `${pathPrefix}kvHandover`,
        'must be an object {msPerMessageIn?, msPerMessageOut?, msPerKibIn?, msPerKibOut?, chunkBytes?}',
        raw,
      );
    const cost: { -readonly [K in keyof KvHandoverCost]: KvHandoverCost[K] } = {};
    for (const k of ['msPerMessageIn', 'msPerMessageOut', 'msPerKibIn', 'msPerKibOut', 'chunkBytes'] as const) {
      const v = optionalNumber(raw, k, `${pathPrefix}kvHandover.`, false);
      if (v !== undefined) cost[k] = v;
    }
    out.kvHandover = cost;
  }
  const prefillEntry = isRecord(value) ? optionalNumber(value, 'serverPrefillEntryWork', pathPrefix, false) : undefined;
  if (prefillEntry !== undefined) {
    // The decode entries take the rest of the mean (phaseEntryWork): it cannot go below 0.
    const most = (out.decodeSteps + 1) * (out.serverEntryWork ?? 0);
    if (prefillEntry > most)
      throw new InstanceValidationError(
        `${pathPrefix}serverPrefillEntryWork`,
        `must be at most (decodeSteps + 1) × serverEntryWork = ${most} (serverEntryWork is the mean entry over the generation's passes)`,
        prefillEntry,
      );
    out.serverPrefillEntryWork = prefillEntry;
  }
  return out;
}
