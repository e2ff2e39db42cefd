import * as grpc from '@grpc/grpc-js';
import {
  ClientProfile,
  GenerationOutcome,
  OutcomeStatus,
  PlannerServiceClient,
  ServerLoad,
  ServingStatus,
  Subjects,
  type ClientPlan,
  type ListPlansResponse,
  type WatchPlansResponse,
} from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { clientProfile, eventually, healthStatus, planOutcome, sameStageTimes, serverLoad } from '@tandem/testkit';
import { Calibrator, DEFAULT_CALIBRATION, PlanMaker } from '../src';
import { makerOptions, SIX_STAGES, startLivePlanner, type LivePlanner } from './fixtures';

// The hand-checkable client of calibration.spec.ts: three stages, 10-token prompts, one new
// token. Device: embed 10 ms, block 50 ms, head 1000 ms; server 1 ms each. SLA 100 ms, planned
// against 90: CCS (about 61 ms) is the plan; a tighter SLA gives CSS (about 12 ms), the floor SSS.
const log = createLogger({ name: 'test', level: 'silent' });

const profile = (clientId: string): ClientProfile => clientProfile({ clientId });
const LOAD: ServerLoad = serverLoad();

/** The outcome an agent following `plan` would publish: met at `ratio` x the prediction, or failed. */
function outcomeOf(plan: ClientPlan, how: { ok: boolean; ratio?: number }): GenerationOutcome {
  const c = plan.classes[0];
  const e2eMs = c.predictedLatencyMs * (how.ratio ?? 1);
  return planOutcome(plan, {
    newTokens: how.ok ? 1 : 0,
    ttftMs: how.ok ? e2eMs : 0,
    e2eMs,
    slaMet: how.ok && e2eMs <= c.slaMs,
    status: how.ok ? OutcomeStatus.OUTCOME_STATUS_OK : OutcomeStatus.OUTCOME_STATUS_FAILED,
  });
}

/** ListPlans of the planner `client` speaks to, whole. */
function listPlans(client: PlannerServiceClient): Promise<ListPlansResponse> {
  return new Promise((resolve, reject) =>
    client.listPlans({ pageSize: 0, pageToken: '' }, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (e, r) => (e ? reject(e) : resolve(r))),
  );
}

describe('the planner learns from outcomes published over NATS', () => {
  let live: LivePlanner;
  let client: PlannerServiceClient;

  beforeAll(async () => {
    const calibrator = new Calibrator({ ...DEFAULT_CALIBRATION, dwellMs: 300, relaxDwellMs: 300 });
    live = await startLivePlanner({ calibrator, log });
    client = new PlannerServiceClient(live.addr, grpc.credentials.createInsecure());
    live.nc.publish(Subjects.serverLoad(LOAD.serverId), ServerLoad.encode(LOAD).finish());
  });

  afterAll(async () => {
    client?.close();
    await live?.stop();
  });

  /** Follows a client's plan stream; `plans` holds every plan pushed, in order. */
  async function watch(clientId: string): Promise<{ plans: ClientPlan[]; current: () => ClientPlan; close: () => void }> {
    const plans: ClientPlan[] = [];
    const call = client.watchPlans({ clientId });
    call.on('data', (m: WatchPlansResponse) => {
      if (m.plan) plans.push(m.plan);
    });
    call.on('error', () => undefined);
    live.nc.publish(Subjects.clientProfile(clientId), ClientProfile.encode(profile(clientId)).finish());
    await eventually(() => plans.length > 0, { what: `a first plan for ${clientId}`, timeoutMs: 5000 });
    return { plans, current: () => plans[plans.length - 1], close: () => call.cancel() };
  }

  /** Publishes an outcome of the current plan every 10 ms, as an agent serving requests would, until `done`. */
  async function pump(
    w: { current: () => ClientPlan },
    how: { ok: boolean; ratio?: number },
    done: () => boolean,
    timeoutMs: number,
    what: string,
  ): Promise<number> {
    const t0 = Date.now();
    await eventually(
      () => {
        if (done()) return true;
        live.nc.publish(Subjects.outcome(w.current().clientId), GenerationOutcome.encode(outcomeOf(w.current(), how)).finish());
        return false;
      },
      { timeoutMs, intervalMs: 10, what },
    );
    return Date.now() - t0;
  }

  it('moves a client whose outcomes miss their SLA to a safer plan within seconds, and back when they recover', async () => {
    const w = await watch('dev-miss');
    try {
      const first = w.current().classes[0];
      expect(first.placement).toBe('CCS');
      // failed generations: every one a miss of the SLA
      const toSafer = await pump(w, { ok: false }, () => w.current().classes[0].placement !== 'CCS', 5000, 'a safer plan');
      expect(toSafer).toBeLessThan(3000);
      const safer = w.current().classes[0];
      expect(safer.placement).toBe('CSS');
      expect(safer.predictedLatencyMs).toBeLessThan(first.predictedLatencyMs);
      expect(safer.predictedServerWork).toBeGreaterThan(first.predictedServerWork);
      expect(w.current().epoch).toBeGreaterThan(w.plans[0].epoch);
      // misses go on: the next step is the floor, all-server
      await pump(w, { ok: false }, () => w.current().classes[0].placement === 'SSS', 5000, 'the all-server floor');
      let seen = (await listPlans(client)).observations.find((o) => o.clientId === 'dev-miss')!.classes[0];
      expect(seen).toMatchObject({ name: 'short', allServer: true, attainmentTarget: 0.9 });
      expect(seen.failures).toBeGreaterThanOrEqual(10);
      expect(seen.safetyFactor).toBeLessThan(0.5);
      // the outcomes recover: relax step by step, back to the plan of the start
      const back = await pump(w, { ok: true }, () => w.current().classes[0].placement === 'CCS', 10_000, 'the original plan back');
      expect(back).toBeLessThan(8000);
      const order = w.plans.map((p) => p.classes[0].placement).filter((p, i, all) => p !== all[i - 1]);
      expect(order).toEqual(['CCS', 'CSS', 'SSS', 'CSS', 'CCS']);
      seen = (await listPlans(client)).observations.find((o) => o.clientId === 'dev-miss')!.classes[0];
      expect(seen.allServer).toBe(false);
      expect(seen.safetyFactor).toBeGreaterThanOrEqual(0.8 - 1e-9);
      expect(live.server.currentObjective).toBe('work');
    } finally {
      w.close();
    }
  });

  it('calibrates its predictions from outcomes slower than predicted, and shows predicted against observed', async () => {
    const w = await watch('dev-slow');
    try {
      expect(w.current().classes[0].placement).toBe('CCS');
      // every generation meets its SLA but takes 1.6x the prediction: 61 ms x 1.6 = 98 ms of a 100 ms SLA
      await pump(w, { ok: true, ratio: 1.6 }, () => w.current().classes[0].placement !== 'CCS', 5000, 'a calibrated plan');
      // planned against 90 / 1.6 = 56 ms, in which CCS no longer fits
      expect(w.current().classes[0].placement).toBe('CSS');
      const seen = (await listPlans(client)).observations.find((o) => o.clientId === 'dev-slow')!.classes[0];
      expect(seen.e2eCorrection).toBeCloseTo(1.6, 6);
      expect(seen.safetyFactor).toBe(1);
      expect(seen.failures).toBe(0);
      expect(seen.window).toBeGreaterThanOrEqual(5);
      expect(seen.observedE2eMedianMs / seen.predictedE2eMedianMs).toBeCloseTo(1.6, 6);
      expect(seen.observedE2eMeanMs).toBeGreaterThan(seen.predictedE2eMeanMs);
    } finally {
      w.close();
    }
  });

  it('drops malformed outcomes with a count and stays healthy', async () => {
    const w = await watch('dev-junk');
    try {
      const plan = w.current();
      const good = outcomeOf(plan, { ok: true });
      const before = { ...live.server.counters };
      const bad: [string, Uint8Array][] = [
        [Subjects.outcome('dev-junk'), new Uint8Array([0xff, 0xff, 0xff, 0x07])],
        [Subjects.outcome('someone-else'), GenerationOutcome.encode(good).finish()],
        [Subjects.outcome('dev-junk'), GenerationOutcome.encode({ ...good, e2eMs: Number.NaN }).finish()],
        [Subjects.outcome('dev-junk'), GenerationOutcome.encode({ ...good, predictedE2eMs: 1e300 }).finish()],
        [Subjects.outcome('dev-junk'), GenerationOutcome.encode({ ...good, placement: 'CSSSSSSSS' }).finish()],
        [Subjects.outcome('dev-junk'), GenerationOutcome.encode({ ...good, requestClass: 'nope' }).finish()],
        [Subjects.outcome('dev-junk'), GenerationOutcome.encode({ ...good, modelId: 'another-model' }).finish()],
        [Subjects.outcome('dev-junk'), GenerationOutcome.encode({ ...good, status: OutcomeStatus.OUTCOME_STATUS_UNSPECIFIED }).finish()],
      ];
      for (const [subject, data] of bad) live.nc.publish(subject, data);
      // well-formed, but of a client the planner has never heard of: ignored, not an error
      live.nc.publish(Subjects.outcome('stranger'), GenerationOutcome.encode({ ...good, clientId: 'stranger' }).finish());
      live.nc.publish(Subjects.outcome('dev-junk'), GenerationOutcome.encode(good).finish());
      await eventually(() => live.server.counters.outcomes === before.outcomes + 1 && live.server.counters.badMessages === before.badMessages + bad.length, {
        what: 'the bad outcomes counted',
        timeoutMs: 5000,
      });
      expect(live.server.counters.strayOutcomes).toBe(before.strayOutcomes + 1);
      expect(await healthStatus(live.addr)).toBe(ServingStatus.SERVING);
      const seen = (await listPlans(client)).observations.find((o) => o.clientId === 'dev-junk')!.classes[0];
      expect(seen.outcomes).toBe(1);
      expect(w.current().epoch).toBe(plan.epoch);
    } finally {
      w.close();
    }
  });
});

describe('the planner corrects TTFT and TPOT per kind of placement from outcomes published over NATS', () => {
  // Six stages, one class with TTFT 100 ms and TPOT 8 ms: the device's 2 ms stages and the
  // server's 1 ms ones give a split with one stage on the device (plan-maker.spec.ts).
  const CLS = { name: 'short', maxPromptTokens: 16, expectedNewTokens: 8, slaMs: 1000, ttftMs: 100, tpotMs: 8 };
  const links = { uplink: { latencyMs: 0.2, bytesPerMs: 10_000 }, downlink: { latencyMs: 0.2, bytesPerMs: 10_000 } };
  let live: LivePlanner;
  let client: PlannerServiceClient;

  beforeAll(async () => {
    const maker = new PlanMaker(makerOptions({ stages: SIX_STAGES, classes: [CLS], slaMargin: 1 }));
    live = await startLivePlanner({ maker, log, calibrator: new Calibrator(DEFAULT_CALIBRATION) });
    client = new PlannerServiceClient(live.addr, grpc.credentials.createInsecure());
    const load = serverLoad({ stages: sameStageTimes(6, 0.25, 1) });
    live.nc.publish(Subjects.serverLoad(load.serverId), ServerLoad.encode(load).finish());
  });

  afterAll(async () => {
    client?.close();
    await live?.stop();
  });

  /** A good or missed generation of `plan`'s class: TTFT as predicted, TPOT at `tpotRatio` × its prediction. */
  function outcome(plan: ClientPlan, tpotRatio: number): GenerationOutcome {
    const c = plan.classes[0];
    const [ttftMs, tpotMs] = [c.predictedTtftMs, c.predictedTpotMs * tpotRatio];
    const e2eMs = ttftMs + (CLS.expectedNewTokens - 1) * tpotMs;
    return planOutcome(plan, {
      promptTokens: CLS.maxPromptTokens,
      newTokens: CLS.expectedNewTokens,
      predictedE2eMs: c.predictedLatencyMs,
      predictedTtftMs: c.predictedTtftMs,
      predictedTpotMs: c.predictedTpotMs,
      ttftMs,
      tpotMs,
      e2eMs,
      ttftSloMs: CLS.ttftMs,
      tpotSloMs: CLS.tpotMs,
      slaMet: e2eMs <= CLS.slaMs,
      ttftMet: ttftMs <= CLS.ttftMs,
      tpotMet: tpotMs <= CLS.tpotMs,
    });
  }

  it("moves a client off a split whose tokens come 1.3 × slower than predicted, shows the factor, and stays on all-server's good outcomes", async () => {
    const plans: ClientPlan[] = [];
    const call = client.watchPlans({ clientId: 'dev-kinds' });
    call.on('data', (m: WatchPlansResponse) => {
      if (m.plan) plans.push(m.plan);
    });
    call.on('error', () => undefined);
    try {
      const profile = clientProfile({ clientId: 'dev-kinds', stages: sameStageTimes(6, 0.5, 2), ...links });
      live.nc.publish(Subjects.clientProfile('dev-kinds'), ClientProfile.encode(profile).finish());
      await eventually(() => plans.length > 0, { what: 'a first plan', timeoutMs: 5000 });
      const split = plans[0].classes[0].placement;
      expect(split).toMatch(/C.*S|S.*C/);
      // Splits decode at 1.3 × their predicted TPOT (over 8 ms), all-server generations as predicted.
      const current = (): ClientPlan => plans[plans.length - 1];
      const publish = (): void => {
        const p = current();
        const ratio = p.classes[0].placement === split ? 1.3 : 1;
        live.nc.publish(Subjects.outcome('dev-kinds'), GenerationOutcome.encode(outcome(p, ratio)).finish());
      };
      await eventually(
        () => {
          if (current().classes[0].placement !== split) return true;
          publish();
          return false;
        },
        { timeoutMs: 5000, intervalMs: 10, what: 'a plan off the split' },
      );
      expect(current().classes[0].placement).toBe('SSSSSS');
      const seen = (await listPlans(client)).observations.find((o) => o.clientId === 'dev-kinds')!.classes[0];
      expect(seen.kindCorrections).toEqual([{ kind: 'split', ttft: 1, tpot: expect.closeTo(1.3, 6) }]);
      expect(seen.safetyFactor).toBe(1); // the per-kind factor moved it, not a tighten step
      // A second of good all-server outcomes does not bring the split back.
      const changes = plans.length;
      const until = Date.now() + 1000;
      await eventually(
        () => {
          publish();
          return Date.now() >= until;
        },
        { timeoutMs: 3000, intervalMs: 10, what: 'a second of all-server outcomes' },
      );
      expect(plans.slice(changes - 1).map((p) => p.classes[0].placement)).toEqual(Array(plans.length - changes + 1).fill('SSSSSS'));
    } finally {
      call.cancel();
    }
  });
});
