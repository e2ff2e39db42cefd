import type { Link, PlacementInstance, Stage } from './types';

/**
 * A placement instance broke a rule of CONTRACT §3. `message` is one line naming the
 * field (with its index), the rule and the value given, e.g.
 * `stages[3].clientMs must be a finite number >= 0, given -1`.
 */
export class InstanceValidationError extends Error {
  override name = 'InstanceValidationError';
  /** Path of the offending field, e.g. `stages[3].clientMs` or `[2].uplink.bytesPerMs`. */
  readonly field: string;
  /** The rule, phrased to follow the field name, e.g. `must be a finite number >= 0`. */
  readonly rule: string;
  /** The value given, rendered for humans (`nothing (missing)` when absent). */
  readonly given: string;
  constructor(field: string, rule: string, given: unknown) {
    const shown = describe(given);
    super(`${field} ${rule}, given ${shown}`);
    this.field = field;
    this.rule = rule;
    this.given = shown;
  }
}

/** Marks an absent field in error messages (`nothing (missing)`). Internal to libs/dp. */
export const MISSING = Symbol('missing');

function describe(value: unknown): string {
  if (value === MISSING) return 'nothing (missing)';
  if (typeof value === 'number') return String(value);
  if (value === undefined) return 'undefined';
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'function' || typeof value === 'symbol') return typeof value;
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** A plain object (not null, not an array). Internal to libs/dp. */
export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `obj[key]`, or {@link MISSING} when the key is absent. Internal to libs/dp. */
export function field(obj: Record<string, unknown>, key: string): unknown {
  return Object.prototype.hasOwnProperty.call(obj, key) ? obj[key] : MISSING;
}

const NON_NEGATIVE = 'must be a finite number >= 0';
const POSITIVE = 'must be a finite number > 0';

/** A finite number >= 0 (or > 0 when `positive`) at `path + key`. @throws InstanceValidationError. Internal to libs/dp. */
export function number(obj: Record<string, unknown>, key: string, path: string, positive: boolean): number {
  const v = field(obj, key);
  const ok = typeof v === 'number' && Number.isFinite(v) && (positive ? v > 0 : v >= 0);
  if (!ok) throw new InstanceValidationError(`${path}${key}`, positive ? POSITIVE : NON_NEGATIVE, v);
  return v as number;
}

/** A {@link Link} at `path + key`. @throws InstanceValidationError. Internal to libs/dp. */
export function link(obj: Record<string, unknown>, key: string, path: string): Link {
  const v = field(obj, key);
  const where = `${path}${key}`;
  if (!isRecord(v)) throw new InstanceValidationError(where, 'must be an object {latencyMs, bytesPerMs}', v);
  return { latencyMs: number(v, 'latencyMs', `${where}.`, false), bytesPerMs: number(v, 'bytesPerMs', `${where}.`, true) };
}

/**
 * The non-empty `stages` array of an instance, each stage checked to be an object with a string
 * `name` and then read by `read` (given its object, its name and its path `stages[i].`, prefixed),
 * in order. Both instance kinds begin their stages so. @throws InstanceValidationError. Internal to libs/dp.
 */
export function stagesOf<T>(value: Record<string, unknown>, pathPrefix: string, read: (raw: Record<string, unknown>, name: string, path: string) => T): T[] {
  const rawStages = field(value, 'stages');
  if (!Array.isArray(rawStages) || rawStages.length === 0) {
    throw new InstanceValidationError(`${pathPrefix}stages`, 'must be a non-empty array', rawStages);
  }
  return rawStages.map((raw: unknown, i: number) => {
    const path = `${pathPrefix}stages[${i}]`;
    if (!isRecord(raw)) throw new InstanceValidationError(path, 'must be an object', raw);
    const name = field(raw, 'name');
    if (typeof name !== 'string') throw new InstanceValidationError(`${path}.name`, 'must be a string', name);
    return read(raw, name, `${path}.`);
  });
}

/**
 * Checks an untrusted value (parsed JSON) against the rules of CONTRACT §3 and returns a
 * clean {@link PlacementInstance} holding only the known fields (unknown fields are ignored,
 * so the format can be extended). Fields are checked in document order and the first
 * broken rule is reported. `resolutionMs` is optional here; `dp-grid` requires it.
 * @param value the candidate instance.
 * @param pathPrefix prepended to field names in errors, e.g. `[2].` for the third
 *   instance of an array.
 * @throws InstanceValidationError naming the field, the rule and the value given.
 * Complexity: O(S).
 */
export function validateInstance(value: unknown, pathPrefix = ''): PlacementInstance {
  const root = pathPrefix.endsWith('.') ? pathPrefix.slice(0, -1) : pathPrefix;
  if (!isRecord(value)) throw new InstanceValidationError(root || 'instance', 'must be an object', value);
  const stages: Stage[] = stagesOf(value, pathPrefix, (raw, name, path) => ({
    name,
    clientMs: number(raw, 'clientMs', path, false),
    serverMs: number(raw, 'serverMs', path, false),
    serverWork: number(raw, 'serverWork', path, false),
    inBytes: number(raw, 'inBytes', path, false),
  }));
  const outBytes = number(value, 'outBytes', pathPrefix, false);
  const uplink = link(value, 'uplink', pathPrefix);
  const downlink = link(value, 'downlink', pathPrefix);
  const slaMs = number(value, 'slaMs', pathPrefix, true);
  const instance: { -readonly [K in keyof PlacementInstance]: PlacementInstance[K] } = { stages, outBytes, uplink, downlink, slaMs };
  if (field(value, 'resolutionMs') !== MISSING) instance.resolutionMs = number(value, 'resolutionMs', pathPrefix, true);
  if (field(value, 'serverEntryWork') !== MISSING) instance.serverEntryWork = number(value, 'serverEntryWork', pathPrefix, false);
  return instance;
}

/**
 * Checks that `instance.resolutionMs` is present and valid, as `dp-grid` needs.
 * @throws InstanceValidationError on `resolutionMs`. O(1).
 */
export function requireResolution(instance: PlacementInstance, pathPrefix = ''): number {
  const r = instance.resolutionMs;
  if (typeof r !== 'number' || !Number.isFinite(r) || r <= 0) {
    throw new InstanceValidationError(`${pathPrefix}resolutionMs`, 'is required by dp-grid and must be a finite number > 0', r === undefined ? MISSING : r);
  }
  return r;
}
