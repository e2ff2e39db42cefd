import type { ClientPlan, ClientProfile, GenerationOutcome, ServerLoad, StageTiming } from '@tandem/protocol';
import { clientProfile, eventually, planOutcome, sameStageTimes, serverLoad } from '@tandem/testkit';
import { makerOptions, plannerOptions, SIX_STAGES } from './fixtures';
import { PlanMaker } from '../src/plan-maker';
import { loadChanged, PlannerServer, profileChanged, smoothLoad } from '../src/planner-server';

const CLASSES = [
  { name: 'short', maxPromptTokens: 16, expectedNewTokens: 8, slaMs: 400 },
  { name: 'long', maxPromptTokens: 128, expectedNewTokens: 16, slaMs: 1500 },
];

function profile(id: string, msPerStage: number, latencyMs = 2): ClientProfile {
  return clientProfile({
    clientId: id,
    unixMs: 0,
    stages: sameStageTimes(SIX_STAGES.length, msPerStage / 4, msPerStage),
    uplink: { latencyMs, bytesPerMs: 10_000 },
    downlink: { latencyMs, bytesPerMs: 10_000 },
  });
}

function load(msPerStage: number, utilisation: number): ServerLoad {
  return serverLoad({ serverId: 's', utilisation, unixMs: 0, stages: sameStageTimes(SIX_STAGES.length, msPerStage / 4, msPerStage) });
}

function planner(sliceMs = 10, over: Partial<ConstructorParameters<typeof PlannerServer>[0]> = {}): PlannerServer {
  const maker = new PlanMaker(makerOptions({ stages: SIX_STAGES, classes: CLASSES, slaMargin: 1 }));
  return new PlannerServer(plannerOptions({ maker, modelId: '', sliceMs, ...over }));
}

describe('what counts as a material change', () => {
  it('ignores noise below the threshold in a profile and sees a real change', () => {
    const base = profile('a', 10);
    const noisy = { ...base, stages: base.stages.map((s) => ({ ...s, decodeMs: s.decodeMs * 1.01 })) };
    expect(profileChanged(base, noisy, 0.02)).toBe(false);
    const slower = { ...base, stages: base.stages.map((s, i) => (i === 3 ? { ...s, decodeMs: s.decodeMs * 1.05 } : s)) };
    expect(profileChanged(base, slower, 0.02)).toBe(true);
    expect(profileChanged(base, profile('a', 10, 3), 0.02)).toBe(true);
    expect(profileChanged(base, { ...base, stages: base.stages.slice(1) }, 0.02)).toBe(true);
    expect(profileChanged(base, { ...base, clientClass: 'phone' }, 0.02)).toBe(true);
    // The step overhead is priced per entry like the uplink's latency: its first measure, or a move, is a change.
    expect(profileChanged(base, { ...base, stepOverheadMs: 2 }, 0.02)).toBe(true);
    expect(profileChanged({ ...base, stepOverheadMs: 2 }, { ...base, stepOverheadMs: 2.01 }, 0.02)).toBe(false);
  });

  it('prices load by its queueing inflation: a small utilisation move is noise, a large one is not', () => {
    expect(loadChanged(load(1, 0.1), load(1, 0.11), 0.02, 0.9)).toBe(false);
    expect(loadChanged(load(1, 0.1), load(1, 0.3), 0.02, 0.9)).toBe(true);
    expect(loadChanged(load(1, 0.1), load(1.05, 0.1), 0.02, 0.9)).toBe(true);
    // beyond the cap every utilisation prices the same
    expect(loadChanged(load(1, 0.95), load(1, 0.99), 0.02, 0.9)).toBe(false);
    // a measured stretch moving is a price moving
    expect(loadChanged({ ...load(1, 0.1), decodeStretch: 2 }, { ...load(1, 0.1), decodeStretch: 2.01 }, 0.02, 0.9)).toBe(false);
    expect(loadChanged({ ...load(1, 0.1), decodeStretch: 2 }, { ...load(1, 0.1), decodeStretch: 3 }, 0.02, 0.9)).toBe(true);
    // A fitted prefill line that prices a long prompt differently is a change, though the mean per token stayed.
    const base = load(1, 0.1);
    const lined = { ...base, wholeModel: { stage: 0, prefillMsPerToken: 0.5, decodeMs: 5, samples: 9 } };
    const fitted = { ...lined, wholeModel: { ...lined.wholeModel, prefillFixedMs: 6, prefillMsPerTokenFitted: 0.1 } };
    expect(loadChanged(lined, fitted, 0.02, 0.9)).toBe(true);
    expect(loadChanged(fitted, { ...fitted, wholeModel: { ...fitted.wholeModel, prefillMsPerTokenFitted: 0.1005 } }, 0.02, 0.9)).toBe(false);
    // So is a decode line that prices a long context differently, though the mean step stayed.
    const decodeLined = { ...fitted, wholeModel: { ...fitted.wholeModel, decodeFixedMs: 3, decodeMsPerContextToken: 0.02 } };
    expect(loadChanged(fitted, decodeLined, 0.02, 0.9)).toBe(true);
    expect(loadChanged(decodeLined, { ...decodeLined, wholeModel: { ...decodeLined.wholeModel, decodeMsPerContextToken: 0.0201 } }, 0.02, 0.9)).toBe(false);
  });

  it('smooths every priced figure of the load, starting each stretch from its first measurement', () => {
    const a = { ...load(2, 0.2), meanQueueMs: 4, decodeStretch: 2, promptStretch: 0 };
    const b = { ...load(4, 0.6), meanQueueMs: 8, decodeStretch: 4, promptStretch: 1.5, longPromptStretch: 3 };
    const s = smoothLoad(a, b, 0.25);
    expect(s.utilisation).toBeCloseTo(0.3, 12);
    expect(s.meanQueueMs).toBeCloseTo(5, 12);
    expect(s.decodeStretch).toBeCloseTo(2.5, 12);
    expect(s.promptStretch).toBe(1.5); // first measurement
    expect(s.longPromptStretch).toBe(3);
    expect(s.stages[1].decodeMs).toBeCloseTo(2.5, 12);
    expect(s.stages[1].prefillMsPerToken).toBeCloseTo(2.5 / 4, 12);
    expect(smoothLoad(undefined, b, 0.25)).toBe(b);
    // A fitted prefill line is smoothed as a pair once both reports have one, taken as it comes otherwise.
    const withStages = (l: ServerLoad, fields: Partial<StageTiming>): ServerLoad => ({ ...l, stages: l.stages.map((st) => ({ ...st, ...fields })) });
    const lined = (l: ServerLoad, fixed: number, slope: number): ServerLoad => withStages(l, { prefillFixedMs: fixed, prefillMsPerTokenFitted: slope });
    const fitted = smoothLoad(lined(a, 4, 0.2), lined(b, 0, 0.6), 0.25);
    expect(fitted.stages[2].prefillFixedMs).toBeCloseTo(3, 12);
    expect(fitted.stages[2].prefillMsPerTokenFitted).toBeCloseTo(0.3, 12);
    expect(smoothLoad(a, lined(b, 1, 0.5), 0.25).stages[2].prefillMsPerTokenFitted).toBe(0.5);
    // The decode line likewise.
    const decodeLined = (l: ServerLoad, fixed: number, slope: number): ServerLoad => withStages(l, { decodeFixedMs: fixed, decodeMsPerContextToken: slope });
    const decodeFitted = smoothLoad(decodeLined(a, 4, 0.02), decodeLined(b, 0, 0.06), 0.25);
    expect(decodeFitted.stages[2].decodeFixedMs).toBeCloseTo(3, 12);
    expect(decodeFitted.stages[2].decodeMsPerContextToken).toBeCloseTo(0.03, 12);
    expect(smoothLoad(a, decodeLined(b, 1, 0.05), 0.25).stages[2].decodeMsPerContextToken).toBe(0.05);
    expect(smoothLoad(a, b, 1)).toBe(b);
    expect(smoothLoad(a, { ...b, stages: b.stages.slice(1) }, 0.25).stages).toHaveLength(b.stages.length - 1);
    // Each kind's queue wait like the mean; the first report with waits (or one from an executor without them) as it comes.
    const w = (x: number) => ({ decodeMs: x, promptMs: 2 * x, longPromptMs: 3 * x, splitDecodeMs: 4 * x });
    expect(smoothLoad({ ...a, queueWaits: w(1) }, { ...b, queueWaits: w(5) }, 0.25).queueWaits).toEqual(w(2));
    expect(smoothLoad(a, { ...b, queueWaits: w(5) }, 0.25).queueWaits).toEqual(w(5));
    expect(smoothLoad({ ...a, queueWaits: w(1) }, b, 0.25).queueWaits).toBeUndefined();
  });
});

describe('PlannerServer re-planning', () => {
  let p: PlannerServer;
  afterEach(async () => {
    await p.stop();
  });

  it('re-plans everyone on a material load change and no one on an unchanged or noisy report', async () => {
    p = planner();
    for (let i = 0; i < 300; i++) p.onProfile(profile(`c${i}`, 5 + (i % 7)));
    p.onLoad(load(1, 0.1));
    await eventually(() => p.counters.passes >= 1 && p.plans().length === 300, { timeoutMs: 5000, what: 'first pass' });
    const after = p.counters.replans;
    expect(after).toBeGreaterThanOrEqual(300);
    p.onLoad(load(1, 0.1));
    p.onLoad({ ...load(1, 0.105), stages: load(1, 0.105).stages.map((s) => ({ ...s, decodeMs: s.decodeMs * 1.005 })) });
    await new Promise((r) => setTimeout(r, 50));
    expect(p.counters.replans).toBe(after);
    p.onLoad(load(1, 0.6));
    await eventually(() => p.counters.replans >= after + 300, { timeoutMs: 5000, what: 'second pass' });
  });

  it('re-plans a client whose profile changed materially, and only that client', async () => {
    p = planner();
    for (let i = 0; i < 50; i++) p.onProfile(profile(`c${i}`, 8));
    p.onLoad(load(1, 0.1));
    await eventually(() => p.plans().length === 50, { timeoutMs: 5000, what: 'plans' });
    const before = p.counters.replans;
    p.onProfile(profile('c7', 8 * 1.005));
    await new Promise((r) => setTimeout(r, 30));
    expect(p.counters.replans).toBe(before);
    p.onProfile(profile('c7', 16));
    await eventually(() => p.counters.replans === before + 1, { timeoutMs: 2000, what: 'one re-plan' });
  });

  it('yields to the event loop during a large pass', async () => {
    p = planner(1);
    for (let i = 0; i < 3000; i++) p.onProfile(profile(`c${i}`, 5 + (i % 11)));
    let passesWhenTimerRan = -1;
    p.onLoad(load(1, 0.2));
    // A timer due right after the pass starts: it runs mid-pass only if the pass yields.
    setTimeout(() => {
      passesWhenTimerRan = p.counters.passes;
    }, 2);
    await eventually(() => p.counters.passes >= 1, { timeoutMs: 20_000, what: 'the pass' });
    expect(p.counters.slices).toBeGreaterThan(1);
    expect(passesWhenTimerRan).toBe(0);
    expect(p.plans()).toHaveLength(3000);
  });

  it("returns to latency only when all-server plans at the clients' request rates would leave the server below half the threshold", async () => {
    let now = 1_000_000;
    p = planner(10, { idleUtilisation: 0.5, utilisationSmoothing: 1, now: () => now });
    // Clients as fast as the server on short links: the work objective runs everything on them.
    const ids = ['c0', 'c1', 'c2', 'c3'];
    for (const id of ids) p.onProfile(profile(id, 1));
    p.onLoad(load(1, 0.9));
    expect(p.currentObjective).toBe('work');
    await eventually(() => p.plans().length === 4, { what: 'the first plans' });
    const short = (plan: ClientPlan): GenerationOutcome =>
      planOutcome(plan, {
        newTokens: 8,
        predictedE2eMs: 0,
        ttftMs: 10,
        tpotMs: 5,
        e2eMs: 50,
        serverComputeMs: 0,
        slaMet: 50 <= plan.classes[0]!.slaMs,
        unixMs: now,
      });
    for (const plan of p.plans()) expect(plan.classes[0]!.placement).toBe('CCCCCC');
    // 10 requests/s from each client for 20 s, all run on the devices: the server is idle.
    for (let t = 0; t < 200; t++) {
      now += 100;
      for (const plan of p.plans()) p.onOutcome(short(plan));
    }
    // All-server at 4 × 10 requests/s would need several cores: the measured 1 % does not bring it back.
    expect(p.latencyUtilisation(0.01)).toBeGreaterThan(1);
    p.onLoad(load(1, 0.01));
    expect(p.currentObjective).toBe('work');
    // The requests stop; a minute later their rate has decayed and latency is affordable again.
    now += 60_000;
    expect(p.latencyUtilisation(0.01)).toBeLessThan(0.05);
    p.onLoad(load(1, 0.01));
    expect(p.currentObjective).toBe('latency');
  });

  it('smooths utilisation: one busy interval does not switch the objective, a busy spell does', () => {
    p = planner(10, { idleUtilisation: 0.5, utilisationSmoothing: 0.3 });
    p.onLoad(load(1, 0));
    expect(p.currentObjective).toBe('latency');
    p.onLoad(load(1, 0.9)); // smoothed 0.27
    expect(p.currentObjective).toBe('latency');
    p.onLoad(load(1, 0.9)); // 0.459
    p.onLoad(load(1, 0.9)); // 0.591
    expect(p.currentObjective).toBe('work');
    p.onLoad(load(1, 0.1)); // 0.444: above half the threshold, still work
    expect(p.currentObjective).toBe('work');
    for (let i = 0; i < 4; i++) p.onLoad(load(1, 0)); // 0.107 after four idle intervals
    expect(p.currentObjective).toBe('latency');
  });
});
