import {
  ClassObservations,
  OutcomeStatus,
  type ClassPlacement,
  type ClientPlan,
  type ClientProfile,
  type GenerationOutcome,
  type ServerLoad,
  type StageTiming,
} from '@tandem/protocol';

// The telemetry messages the planner's tests, the end-to-end tests, the CLI's tests and the
// benchmarks build: one default of each, the hand-checkable client of the planner's tests (three
// stages, model 'm'; the device runs them in 1, 5 and 100 ms, the server in 0.1 ms each, over
// links of no latency and 1e6 bytes/ms), and a test states only what it is about.

/** Stage i measured at `prefillMsPerToken[i]` a prompt token and `decodeMs[i]` a step, `samples` samples each. */
export function stageTimes(prefillMsPerToken: readonly number[], decodeMs: readonly number[] = prefillMsPerToken, samples = 3): StageTiming[] {
  return prefillMsPerToken.map((prefill, stage) => ({ stage, prefillMsPerToken: prefill, decodeMs: decodeMs[stage], samples }));
}

/** `count` stages measured alike: `prefillMsPerToken` a prompt token, `decodeMs` a step. */
export function sameStageTimes(count: number, prefillMsPerToken: number, decodeMs = prefillMsPerToken): StageTiming[] {
  return stageTimes(Array<number>(count).fill(prefillMsPerToken), Array<number>(count).fill(decodeMs));
}

/** A client's profile: client 'c' of class 'default' running the three stages in 1, 5 and 100 ms, sent now, with `over` on top. */
export function clientProfile(over: Partial<ClientProfile> = {}): ClientProfile {
  return {
    clientId: 'c',
    clientClass: 'default',
    modelId: 'm',
    unixMs: Date.now(),
    planEpoch: 0,
    stages: stageTimes([1, 5, 100]),
    uplink: { latencyMs: 0, bytesPerMs: 1e6 },
    downlink: { latencyMs: 0, bytesPerMs: 1e6 },
    ...over,
  };
}

/** An idle server 'srv' running the three stages in 0.1 ms each, with no stretch measured, sent now, with `over` on top. */
export function serverLoad(over: Partial<ServerLoad> = {}): ServerLoad {
  return {
    serverId: 'srv',
    modelId: 'm',
    queueDepth: 0,
    activeSessions: 0,
    utilisation: 0,
    unixMs: Date.now(),
    meanQueueMs: 0,
    overhead: undefined,
    wholeModel: undefined,
    queueWaits: undefined,
    decodeStretch: 0,
    promptStretch: 0,
    longPromptStretch: 0,
    longStepTokens: 0,
    stages: sameStageTimes(3, 0.1),
    ...over,
  };
}

/**
 * A plan's feasible class 'short' (prompts up to 32 tokens, 8 new ones) on placement CSS: SLA
 * 100 ms, 80 ms and 3 units of server work predicted, no TTFT or TPOT objective or prediction;
 * with `over` on top.
 */
export function classPlacement(over: Partial<ClassPlacement> = {}): ClassPlacement {
  return {
    name: 'short',
    maxPromptTokens: 32,
    expectedNewTokens: 8,
    placement: 'CSS',
    slaMs: 100,
    predictedLatencyMs: 80,
    predictedServerWork: 3,
    feasible: true,
    ttftMs: 0,
    tpotMs: 0,
    predictedTtftMs: 0,
    predictedTpotMs: 0,
    predictedTtftMsPerPromptToken: 0,
    ...over,
  };
}

/** The planner's observations of class 'short' before any outcome: attainment target 0.9, no correction, safety factor 1; with `over` on top. */
export function classObservations(over: Partial<ClassObservations> = {}): ClassObservations {
  return ClassObservations.fromPartial({
    name: 'short',
    attainmentTarget: 0.9,
    e2eCorrection: 1,
    ttftCorrection: 1,
    tpotCorrection: 1,
    safetyFactor: 1,
    e2eRatio: 1,
    ...over,
  });
}

/** The verdict of a generation that met its end-to-end SLA and had no TTFT or TPOT objective. */
export const MET_E2E_SLA = { ttftSloMs: 0, tpotSloMs: 0, slaMet: true, ttftMet: true, tpotMet: true, status: OutcomeStatus.OUTCOME_STATUS_OK } as const;

/**
 * A met generation of client 'c': 4 prompt tokens and 4 new ones on placement CCSSSC (epoch 1),
 * 11 ms against a prediction of 10 and an SLA of 10 s, ended now, with `over` on top.
 */
export function generationOutcome(over: Partial<GenerationOutcome> = {}): GenerationOutcome {
  return {
    clientId: 'c',
    clientClass: 'default',
    modelId: 'm',
    requestClass: 'short',
    placement: 'CCSSSC',
    planEpoch: 1,
    promptTokens: 4,
    newTokens: 4,
    predictedE2eMs: 10,
    predictedTtftMs: 2,
    predictedTpotMs: 2,
    ttftMs: 3,
    tpotMs: 2,
    e2eMs: 11,
    serverComputeMs: 1,
    serverQueueMs: 0,
    slaMs: 10_000,
    ...MET_E2E_SLA,
    unixMs: Date.now(),
    ...over,
  };
}

/**
 * What an agent following `plan` publishes for a generation of its first class: 10 prompt
 * tokens and one new token, measured at the plan's predicted latency; with `over` on top.
 */
export function planOutcome(plan: ClientPlan, over: Partial<GenerationOutcome> = {}): GenerationOutcome {
  const c = plan.classes[0];
  return generationOutcome({
    clientId: plan.clientId,
    requestClass: c.name,
    placement: c.placement,
    planEpoch: plan.epoch,
    promptTokens: 10,
    newTokens: 1,
    predictedE2eMs: c.predictedLatencyMs,
    predictedTtftMs: 0,
    predictedTpotMs: 0,
    ttftMs: c.predictedLatencyMs,
    tpotMs: 0,
    e2eMs: c.predictedLatencyMs,
    slaMs: c.slaMs,
    ...over,
  });
}
