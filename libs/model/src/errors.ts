/** Fields shared by the model library's bad-input errors: what was wrong, by which rule, with which value. */
export interface InputProblem {
  /** The field, flag or tensor that is wrong, e.g. `config.nHead`, `stages[3].file`, `input.shape`. */
  readonly field: string;
  /** The rule it breaks, phrased to follow "must", e.g. `be a positive integer`. */
  readonly rule: string;
  /** The offending value as given (already rendered for a message). */
  readonly given: string;
}

/** Renders any value for an error message: strings quoted, arrays and objects as JSON, cut at 120 characters. */
export function renderGiven(value: unknown): string {
  let s: string;
  if (typeof value === 'string') s = `'${value}'`;
  else if (typeof value === 'bigint') s = `${value}`;
  else if (value === undefined) s = 'nothing';
  else {
    try {
      s = JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) ?? String(value);
    } catch {
      // Cyclic or exotic values: String() is the best rendering available, nothing is lost.
      s = String(value);
    }
  }
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}

function problemMessage(p: { field: string; rule: string; given: unknown }): string {
  return `${p.field} must ${p.rule}, given ${renderGiven(p.given)}`;
}

/** Base of the library's bad-input errors: the message reads `<field> must <rule>, given <value>`. */
abstract class InputError extends Error implements InputProblem {
  readonly field: string;
  readonly rule: string;
  readonly given: string;
  constructor(field: string, rule: string, given: unknown, options?: { cause?: unknown; message?: string }) {
    super(options?.message ?? problemMessage({ field, rule, given }), options);
    this.field = field;
    this.rule = rule;
    this.given = renderGiven(given);
  }
}

/**
 * A model directory (manifest.json or its files) is malformed or missing. The message reads
 * `<field> must <rule>, given <value>`.
 */
export class ModelFormatError extends InputError {
  override name = 'ModelFormatError';
}

/**
 * Why a stage input was refused. `invalid` means the request itself is malformed (gRPC
 * INVALID_ARGUMENT); `precondition` means it is well-formed but does not fit the runner's or the
 * cache's current state, e.g. the context is full or the stage is not loaded here (FAILED_PRECONDITION).
 */
export type StageInputProblemKind = 'invalid' | 'precondition';

/**
 * A tensor handed to {@link StageRunner.run} / `runBatch` was refused before anything ran; the
 * cache is unchanged. The message reads `<field> must <rule>, given <value>`.
 */
export class StageInputError extends InputError {
  override name = 'StageInputError';
  readonly kind: StageInputProblemKind;
  constructor(field: string, rule: string, given: unknown, kind: StageInputProblemKind = 'invalid', options?: { cause?: unknown }) {
    super(field, rule, given, options);
    this.kind = kind;
  }
}

/**
 * A Hugging Face checkpoint cannot be imported: a config field is missing or out of range, or a
 * tensor is missing, mis-shaped or of an unsupported dtype. For a tensor, `field` is its name
 * (as found, with its prefix if any), `rule` names the expected shape (`have shape [32,96]`) and
 * `given` the shape found (`missing` when there is none); the message reads `tensor <name> has
 * the wrong shape: expected shape …, found …` (or `is missing`).
 */
export class ImportError extends InputError {
  override name = 'ImportError';
}

/** A placement string or a preset/option given to the library is invalid. */
export class ModelOptionError extends InputError {
  override name = 'ModelOptionError';
}

/** True when `err` is one of this library's bad-input errors (the CLI maps them to exit code 2). */
export function isModelInputError(err: unknown): err is ModelFormatError | StageInputError | ImportError | ModelOptionError {
  return err instanceof ModelFormatError || err instanceof StageInputError || err instanceof ImportError || err instanceof ModelOptionError;
}
