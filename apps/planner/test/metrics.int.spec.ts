import { ClientProfile, GenerationOutcome, OutcomeStatus, ServerLoad, ServingStatus, Subjects, type ClientPlan } from '@tandem/protocol';
import {
  clientProfile,
  eventually,
  expectSamples,
  generationOutcome,
  healthStatus,
  planOutcome,
  requireSample,
  sampleValue,
  scrapeText,
  serverLoad,
  stageTimes,
} from '@tandem/testkit';
import { PLANNER_SERVICE_NAME } from '../src';
import { PlanClients, startLivePlanner, type LivePlanner } from './fixtures';

// The hand-checkable client of the planner's tests (fixtures.ts): three stages, one class of
// 10-token prompts and one new token, SLA 100 ms; the plan is CCS (about 61 ms predicted).
const profile = (clientId: string, ms = [1, 5, 100]): ClientProfile => clientProfile({ clientId, stages: stageTimes(ms) });
const LOAD: ServerLoad = serverLoad();

/** The outcome an agent following `plan` publishes: `ratio` x the predicted latency, or failed. */
function outcomeOf(plan: ClientPlan, ok: boolean, ratio = 1): GenerationOutcome {
  const { predictedLatencyMs: predicted, slaMs } = plan.classes[0];
  const e2eMs = ok ? predicted * ratio : 0;
  return planOutcome(plan, {
    newTokens: ok ? 1 : 0,
    ttftMs: e2eMs,
    e2eMs,
    slaMet: ok && e2eMs <= slaMs,
    status: ok ? OutcomeStatus.OUTCOME_STATUS_OK : OutcomeStatus.OUTCOME_STATUS_FAILED,
  });
}

describe('planner metrics on /metrics, with real telemetry over NATS', () => {
  let live: LivePlanner;
  let port: number;
  const clients = new PlanClients();

  const scrape = (): Promise<string> => scrapeText(port);
  const value = requireSample;

  beforeAll(async () => {
    live = await startLivePlanner({ metricsPort: 0 });
    port = live.server.metrics.port ?? 0;
  });

  afterAll(async () => {
    clients.close();
    await live?.stop();
  });

  /** Watches `clientId`'s plans and publishes its profile; resolves with its first plan. */
  async function firstPlan(clientId: string): Promise<ClientPlan> {
    const got = clients.watch(live.port, clientId);
    live.nc.publish(Subjects.clientProfile(clientId), ClientProfile.encode(profile(clientId)).finish());
    return eventually(() => got.find((m) => m.plan)?.plan, { what: `a first plan for ${clientId}`, timeoutMs: 5000 });
  }

  it('answers health SERVING by its own service name, and serves /metrics before any telemetry', async () => {
    for (const service of [PLANNER_SERVICE_NAME, '']) expect(await healthStatus(live.addr, service)).toBe(ServingStatus.SERVING);
    expect(port).toBeGreaterThan(0);
    const text = await scrape();
    expectSamples(text, {
      tandem_planner_clients: 0,
      'tandem_planner_outcomes_total{request_class="short",result="met"}': 0,
      tandem_planner_slo_attainment_target_ratio: 0.9,
    });
    expect(text).not.toMatch(/^tandem_planner_plan_changes_total\{/m);
  });

  it('counts clients, plan changes, re-plan rounds, outcomes by class and result, predicted against observed, and attainment', async () => {
    live.nc.publish(Subjects.serverLoad(LOAD.serverId), ServerLoad.encode(LOAD).finish());
    const a = await firstPlan('dev-a');
    await firstPlan('dev-b');
    expect(a.classes[0].placement).toBe('CCS');
    let text = await scrape();
    expectSamples(text, {
      tandem_planner_clients: 2,
      'tandem_planner_plan_changes_total{algorithm="dp",objective="work"}': 2,
      'tandem_planner_telemetry_accepted_total{type="ServerLoad"}': 1,
      'tandem_planner_telemetry_accepted_total{type="ClientProfile"}': 2,
    });
    expect(value(text, 'tandem_planner_replan_duration_seconds_count')).toBeGreaterThanOrEqual(1);

    // dev-a: 3 met (at the prediction), 2 missed (2x the prediction: 122 ms of a 100 ms SLA), 1 failed.
    const outcomes = [...[1, 1, 1].map((r) => outcomeOf(a, true, r)), outcomeOf(a, true, 2), outcomeOf(a, true, 2), outcomeOf(a, false)];
    for (const o of outcomes) live.nc.publish(Subjects.outcome('dev-a'), GenerationOutcome.encode(o).finish());
    await eventually(() => live.server.counters.outcomes === outcomes.length, { what: 'the outcomes taken', timeoutMs: 5000 });
    text = await scrape();
    expectSamples(text, {
      'tandem_planner_outcomes_total{request_class="short",result="met"}': 3,
      'tandem_planner_outcomes_total{request_class="short",result="missed"}': 2,
      'tandem_planner_outcomes_total{request_class="short",result="failed"}': 1,
      'tandem_planner_telemetry_accepted_total{type="GenerationOutcome"}': 6,
      // Predicted and observed e2e of the 5 successful ones: observed / predicted = (3 x 1 + 2 x 2) / 5.
      'tandem_planner_predicted_latency_seconds_count{request_class="short",term="e2e"}': 5,
      'tandem_planner_observed_latency_seconds_count{request_class="short",term="e2e"}': 5,
    });
    const predicted = value(text, 'tandem_planner_predicted_latency_seconds_sum{request_class="short",term="e2e"}');
    expect(predicted).toBeCloseTo((5 * a.classes[0].predictedLatencyMs) / 1000, 9);
    expect(value(text, 'tandem_planner_observed_latency_seconds_sum{request_class="short",term="e2e"}') / predicted).toBeCloseTo(7 / 5, 9);
    // The plan predicts no TTFT here (0): only the observed one is counted.
    expect(value(text, 'tandem_planner_observed_latency_seconds_count{request_class="short",term="ttft"}')).toBe(5);
    expect(sampleValue(text, 'tandem_planner_predicted_latency_seconds_count{request_class="short",term="ttft"}') ?? 0).toBe(0);
    // Attainment: only dev-a has outcomes of its plan in force, so the class's figure is its own.
    const seen = await clients.listPlans(live.port);
    const own = seen.observations.find((o) => o.clientId === 'dev-a')?.classes[0];
    expect(own?.planOutcomes).toBe(6);
    const attainment = value(text, 'tandem_planner_slo_attainment_ratio{request_class="short"}');
    expect(attainment).toBeCloseTo(own?.attainment ?? -1, 9);
    expect(attainment).toBeGreaterThan(0);
    expect(attainment).toBeLessThan(1);
    // No client id in any label.
    expect(text).not.toContain('dev-a');
    expect(text).not.toContain('dev-b');
  });

  it('counts dropped telemetry by reason, where the planner validates it', async () => {
    const before = { ...live.server.counters.dropped };
    live.nc.publish(Subjects.clientProfile('dev-bad'), ClientProfile.encode(profile('dev-bad', [1, -5, 100])).finish());
    live.nc.publish(Subjects.clientProfile('dev-bad'), ClientProfile.encode(profile('dev-bad', [1, 5, 1e9])).finish());
    live.nc.publish(Subjects.serverLoad('srv'), new Uint8Array([0xff, 0xff, 0xff, 0x07]));
    await eventually(() => live.server.counters.badMessages >= 3, { what: 'the bad telemetry dropped', timeoutMs: 5000 });
    const text = await scrape();
    expect(before).toEqual({});
    expect(value(text, 'tandem_planner_telemetry_dropped_total{reason="ClientProfile.stages[].prefillMsPerToken:range"}')).toBe(2);
    expect(value(text, 'tandem_planner_telemetry_dropped_total{reason="ServerLoad:decode"}')).toBe(1);
    for (const [reason, n] of Object.entries(live.server.counters.dropped))
      expect(value(text, `tandem_planner_telemetry_dropped_total{reason="${reason}"}`)).toBe(n);
    expect(value(await scrape(), 'tandem_planner_clients')).toBe(2);
  });
});
