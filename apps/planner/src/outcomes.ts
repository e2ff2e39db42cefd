import { ID_PATTERN, OutcomeStatus, Subjects, type GenerationOutcome } from '@tandem/protocol';
import { isPlacementLetters, planKey } from '@tandem/dp';

/** Largest duration an outcome may state, ms (one day): a larger one is a broken clock or a broken agent. */
export const MAX_OUTCOME_MS = 86_400_000;
/** Largest token count an outcome may state (prompt or output). */
export const MAX_OUTCOME_TOKENS = 1 << 20;

/** Three latency figures of one generation, ms; 0 means none (not predicted, or no SLO stated). */
export interface LatencyTriple {
  readonly e2e: number;
  readonly ttft: number;
  readonly tpot: number;
}

/**
 * A GenerationOutcome after validation: the part the planner learns from. Invariants: every
 * figure is finite, in 0..MAX_OUTCOME_MS; `good` implies `ok`.
 */
export interface ValidOutcome {
  readonly clientId: string;
  readonly requestClass: string;
  /** The plan it ran, as {@link planKey} names it: the placement, and `/` and the decode's for a phased plan. */
  readonly placement: string;
  readonly planEpoch: number;
  /** The executor its server stages ran on (GenerationOutcome.executor_id); '' or absent when not stated. */
  readonly executorId?: string;
  /** The generation produced every token (status OK). */
  readonly ok: boolean;
  /** It met every SLO stated for it (false for a failed generation). */
  readonly good: boolean;
  /** What the plan predicted (0 = no prediction). */
  readonly predicted: LatencyTriple;
  /** What was measured (0 = not measured, e.g. no token before a failure). */
  readonly measured: LatencyTriple;
  readonly unixMs: number;
}

/** What an outcome is checked against. */
export interface OutcomeContext {
  /** Stages of the planned model: the placement must have one letter per stage. */
  readonly stageCount: number;
  /** Names of the planner's request classes. */
  readonly classes: ReadonlySet<string>;
  /** The subject the message came on, when it came over NATS: it must be the client's own. */
  readonly subject?: string;
}

/** A value cut to a short length for an error message. */
function shown(v: unknown): string {
  const s = typeof v === 'string' ? `'${v}'` : String(v);
  return s.length > 48 ? `${s.slice(0, 45)}...` : s;
}

function duration(o: GenerationOutcome, k: keyof GenerationOutcome & `${string}Ms`): number {
  const v = o[k] as number;
  if (!Number.isFinite(v) || v < 0 || v > MAX_OUTCOME_MS) throw new Error(`${k} must be a finite number in 0..${MAX_OUTCOME_MS} ms, given ${shown(v)}`);
  return v;
}

/**
 * Checks one GenerationOutcome as the planner takes it from NATS (model id apart, which the
 * planner checks like every telemetry message's).
 * @throws Error naming the field, the rule and the value given (cut short) when it is malformed.
 */
export function validateOutcome(o: GenerationOutcome, ctx: OutcomeContext): ValidOutcome {
  if (!ID_PATTERN.test(o.clientId)) throw new Error(`clientId must match ${ID_PATTERN}, given ${shown(o.clientId)}`);
  if (ctx.subject !== undefined && ctx.subject !== Subjects.outcome(o.clientId))
    throw new Error(`clientId must match the subject ${shown(ctx.subject)}, given ${shown(o.clientId)}`);
  if (!ctx.classes.has(o.requestClass)) throw new Error(`requestClass must be one of ${[...ctx.classes].join(', ')}, given ${shown(o.requestClass)}`);
  if (!isPlacementLetters(o.placement, ctx.stageCount)) throw new Error(`placement must be ${ctx.stageCount} letters C or S, given ${shown(o.placement)}`);
  if (o.decodePlacement && !isPlacementLetters(o.decodePlacement, ctx.stageCount))
    throw new Error(`decodePlacement must be empty or ${ctx.stageCount} letters C or S, given ${shown(o.decodePlacement)}`);
  const executorId = o.executorId ?? '';
  if (executorId !== '' && !ID_PATTERN.test(executorId)) throw new Error(`executorId must be empty or match ${ID_PATTERN}, given ${shown(executorId)}`);
  if (!Number.isSafeInteger(o.planEpoch) || o.planEpoch < 1)
    throw new Error(`planEpoch must be an integer >= 1 (outcomes come from planned generations), given ${shown(o.planEpoch)}`);
  if (o.status !== OutcomeStatus.OUTCOME_STATUS_OK && o.status !== OutcomeStatus.OUTCOME_STATUS_FAILED)
    throw new Error(`status must be OUTCOME_STATUS_OK or OUTCOME_STATUS_FAILED, given ${shown(o.status)}`);
  if (!Number.isSafeInteger(o.unixMs) || o.unixMs < 0) throw new Error(`unixMs must be an integer >= 0, given ${shown(o.unixMs)}`);
  for (const k of ['promptTokens', 'newTokens'] as const) {
    if (o[k] > MAX_OUTCOME_TOKENS) throw new Error(`${k} must be at most ${MAX_OUTCOME_TOKENS}, given ${o[k]}`);
  }
  const ok = o.status === OutcomeStatus.OUTCOME_STATUS_OK;
  if (o.promptTokens < 1) throw new Error(`promptTokens must be >= 1, given ${o.promptTokens}`);
  if (ok && o.newTokens < 1) throw new Error(`newTokens must be >= 1 for status OUTCOME_STATUS_OK, given ${o.newTokens}`);
  const predicted = { e2e: duration(o, 'predictedE2eMs'), ttft: duration(o, 'predictedTtftMs'), tpot: duration(o, 'predictedTpotMs') };
  const measured = { e2e: duration(o, 'e2eMs'), ttft: duration(o, 'ttftMs'), tpot: duration(o, 'tpotMs') };
  duration(o, 'serverComputeMs');
  duration(o, 'serverQueueMs');
  if (ok && measured.e2e <= 0) throw new Error(`e2eMs must be > 0 for status OUTCOME_STATUS_OK, given ${measured.e2e}`);
  // Each *_met flag must say what the figures say: a stated SLO is met exactly when a
  // successful generation's measured figure is within it; with no SLO the flag is true.
  const slos = [
    ['slaMs', 'slaMet', measured.e2e],
    ['ttftSloMs', 'ttftMet', measured.ttft],
    ['tpotSloMs', 'tpotMet', measured.tpot],
  ] as const;
  let good = ok;
  for (const [slo, met, value] of slos) {
    const limit = duration(o, slo);
    const expected = limit === 0 || (ok && value <= limit);
    if (o[met] !== expected)
      throw new Error(`${met} must be ${expected} for ${slo} ${limit} and status ${ok ? 'OK' : 'FAILED'} with the measured ${value} ms, given ${o[met]}`);
    good &&= expected;
  }
  return {
    clientId: o.clientId,
    requestClass: o.requestClass,
    placement: planKey(o),
    planEpoch: o.planEpoch,
    executorId,
    ok,
    good,
    predicted,
    measured,
    unixMs: o.unixMs,
  };
}
