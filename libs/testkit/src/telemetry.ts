import { OutcomeStatus, type ClientProfile, type GenerationOutcome, type ServerLoad, type StageTiming } from '@tandem/protocol';

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
    decodeStretch: 0,
    promptStretch: 0,
    longPromptStretch: 0,
    longStepTokens: 0,
    stages: sameStageTimes(3, 0.1),
    ...over,
  };
}

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
    ttftSloMs: 0,
    tpotSloMs: 0,
    slaMet: true,
    ttftMet: true,
    tpotMet: true,
    status: OutcomeStatus.OUTCOME_STATUS_OK,
    unixMs: Date.now(),
    ...over,
  };
}

/**
 * The planner settings the tests and the benchmarks plan with (a PlanMakerOptions without its
 * stages and classes): the DP solver, no SLA overrides, hysteresis 5 %, SLA margin 0.9, 0.5 ms
 * resolution, utilisation priced up to 0.9.
 */
export const PLAN_SETTINGS = {
  slaOverrides: {},
  algorithm: 'dp',
  hysteresis: 0.05,
  slaMargin: 0.9,
  resolutionMs: 0.5,
  maxUtilisation: 0.9,
} as const;
