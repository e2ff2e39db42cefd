import { OutcomeStatus, type ClassPlacement, type GenerationOutcome } from '@tandem/protocol';

/** What the agent measured of one generation. */
export interface MeasuredGeneration {
  readonly ok: boolean;
  readonly promptTokens: number;
  /** Tokens produced (all of them, or those before the failure). */
  readonly newTokens: number;
  /** Time to the first token, ms (0 when none came). */
  readonly ttftMs: number;
  /** From start to the last token (or to the failure), ms. */
  readonly e2eMs: number;
  readonly serverComputeMs: number;
  readonly serverQueueMs: number;
}

/**
 * The GenerationOutcome of one generation that followed class `cls` of plan `epoch`:
 * predictions and SLOs from the plan, measured figures, and whether each stated SLO was met
 * (a failed generation meets none; an SLO of 0 is not stated and counts as met).
 */
/** The plan's predictions for one generation, as GenerationSummary carries them (ms; 0 = none). */
export interface Predicted {
  readonly predictedLatencyMs: number;
  readonly predictedTtftMs: number;
  readonly predictedTpotMs: number;
}

/**
 * The plan's predictions for one generation of `promptTokens` and `newTokens`: the class is
 * priced at its longest prompt and expected output, so TTFT is moved by the plan's slope per
 * prompt token, one decode pass by its own (a step attends to the prompt), and a phased plan's
 * hand-over (spread over the class's decode passes in its TPOT) by its own: E2E = TTFT +
 * (newTokens - 1) × one decode pass + the hand-over, and TPOT = (E2E - TTFT) / (newTokens - 1).
 * All 0 without a class (override or start-up plan).
 */
export function predictedOf(planned: ClassPlacement | undefined, promptTokens: number, newTokens: number): Predicted {
  if (!planned) return { predictedLatencyMs: 0, predictedTtftMs: 0, predictedTpotMs: 0 };
  const shorter = planned.maxPromptTokens - promptTokens;
  const ttft = Math.max(0, planned.predictedTtftMs - shorter * planned.predictedTtftMsPerPromptToken);
  if (!(planned.predictedTtftMs > 0)) return { predictedLatencyMs: planned.predictedLatencyMs, predictedTtftMs: 0, predictedTpotMs: planned.predictedTpotMs };
  const passes = Math.max(0, newTokens - 1);
  const planPasses = planned.expectedNewTokens - 1;
  const handover = planned.predictedHandoverMs ?? 0;
  const passSlope = shorter * (planned.predictedTpotMsPerPromptToken ?? 0);
  if (!(handover > 0) || planPasses < 1 || passes === 0) {
    const tpot = Math.max(0, planned.predictedTpotMs - passSlope);
    return { predictedLatencyMs: ttft + passes * tpot, predictedTtftMs: ttft, predictedTpotMs: tpot };
  }
  const pass = Math.max(0, planned.predictedTpotMs - handover / planPasses - passSlope);
  const moved = Math.max(0, handover - shorter * (planned.predictedHandoverMsPerPromptToken ?? 0));
  const e2e = ttft + passes * pass + moved;
  return { predictedLatencyMs: e2e, predictedTtftMs: ttft, predictedTpotMs: (e2e - ttft) / passes };
}

/**
 * `placement`: the placement run (a phased plan's prefill placement); `predicted`: the plan's
 * predictions for this request (default: for its prompt and the tokens it produced);
 * `decodePlacement`: a phased plan's decode placement, carried only when it differs from `placement`;
 * `executorId`: the executor the server stages ran on (its last session's), when a plan named it.
 */
export function buildOutcome(
  who: { clientId: string; clientClass: string; modelId: string },
  cls: ClassPlacement,
  epoch: number,
  placement: string,
  m: MeasuredGeneration,
  unixMs: number,
  predicted: Predicted = predictedOf(cls, m.promptTokens, m.newTokens),
  decodePlacement?: string,
  executorId?: string,
): GenerationOutcome {
  const tpotMs = m.newTokens > 1 ? Math.max(0, m.e2eMs - m.ttftMs) / (m.newTokens - 1) : 0;
  const slaMs = cls.slaMs;
  // An SLO (or prediction) of 0 is not stated.
  const ttftSloMs = cls.ttftMs;
  const tpotSloMs = cls.tpotMs;
  const met = (slo: number, value: number): boolean => slo === 0 || (m.ok && value <= slo);
  return {
    clientId: who.clientId,
    clientClass: who.clientClass,
    modelId: who.modelId,
    requestClass: cls.name,
    placement,
    planEpoch: epoch,
    promptTokens: m.promptTokens,
    newTokens: m.newTokens,
    predictedE2eMs: predicted.predictedLatencyMs,
    predictedTtftMs: predicted.predictedTtftMs,
    predictedTpotMs: predicted.predictedTpotMs,
    ttftMs: m.ttftMs,
    tpotMs,
    e2eMs: m.e2eMs,
    serverComputeMs: m.serverComputeMs,
    serverQueueMs: m.serverQueueMs,
    slaMs,
    ttftSloMs,
    tpotSloMs,
    slaMet: met(slaMs, m.e2eMs),
    ttftMet: met(ttftSloMs, m.ttftMs),
    tpotMet: met(tpotSloMs, tpotMs),
    status: m.ok ? OutcomeStatus.OUTCOME_STATUS_OK : OutcomeStatus.OUTCOME_STATUS_FAILED,
    unixMs,
    ...(decodePlacement && decodePlacement !== placement ? { decodePlacement } : {}),
    ...(executorId ? { executorId } : {}),
  };
}
