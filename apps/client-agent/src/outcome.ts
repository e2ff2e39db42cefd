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
export function buildOutcome(who: { clientId: string; clientClass: string; modelId: string }, cls: ClassPlacement, epoch: number, placement: string, m: MeasuredGeneration, unixMs: number): GenerationOutcome {
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
    predictedE2eMs: cls.predictedLatencyMs,
    predictedTtftMs: cls.predictedTtftMs,
    predictedTpotMs: cls.predictedTpotMs,
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
  };
}
