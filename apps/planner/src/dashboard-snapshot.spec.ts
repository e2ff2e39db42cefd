import type { ClassObservations, ClassPlacement, ClientPlan } from '@tandem/protocol';
import { classObservations, classPlacement, serverLoad } from '@tandem/testkit';
import { dashboardSnapshot, type DashboardSource } from './dashboard-snapshot';

const CLASSES = [
  { name: 'short', maxPromptTokens: 32, expectedNewTokens: 16, slaMs: 1500 },
  { name: 'chat', maxPromptTokens: 128, expectedNewTokens: 32, ttftMs: 400, tpotMs: 50 },
];
const INFO = { modelId: 'm', algorithm: 'dp', stages: ['embed', 'block', 'head'], classes: CLASSES, attainmentTarget: 0.9 };

function placement(name: string, p: string, over: Partial<ClassPlacement> = {}): ClassPlacement {
  return classPlacement({ name, expectedNewTokens: 16, placement: p, slaMs: 1500, predictedLatencyMs: 812.345, predictedServerWork: 12.04, ...over });
}

function observed(name: string, planOutcomes: number, attainment: number, window = 0, pred = 0, obs = 0): ClassObservations {
  const e2e = { predictedE2eMedianMs: pred, observedE2eMedianMs: obs, predictedE2eMeanMs: pred, observedE2eMeanMs: obs };
  return classObservations({ name, outcomes: planOutcomes + 1, failures: 1, planOutcomes, attainment, window, ...e2e });
}

const plan = (clientId: string, a: string, b: string): ClientPlan => ({
  clientId,
  epoch: 5,
  algorithm: 'dp',
  createdUnixMs: 1000,
  alternates: [],
  classes: [placement('short', a), placement('chat', b)],
});

function source(over: Partial<DashboardSource> = {}): DashboardSource {
  const plans = [plan('a', 'SSS', 'CCS'), plan('b', 'CCC', 'CCS'), plan('c', 'CSS', 'SSS')];
  return {
    plans: () => plans,
    observations: () => [
      { clientId: 'a', classes: [observed('short', 10, 1, 4, 100, 120), observed('chat', 0, 0)] },
      { clientId: 'b', classes: [observed('short', 30, 0.5, 12, 200, 180), observed('chat', 0, 0)] },
      { clientId: 'c', classes: [] },
    ],
    load: serverLoad({ utilisation: 0.123456, queueDepth: 4, meanQueueMs: 3.14159 }),
    followedExecutor: 'srv',
    executorIds: ['srv', 'other'],
    executorSummaries: () => [
      { id: 'other', address: '10.0.0.2:50051', clients: 1, utilisation: 0.98765, draining: true, lastReportUnixMs: 5000 },
      { id: 'srv', address: '', clients: 0, utilisation: 0.123456, draining: false, lastReportUnixMs: 6000 },
    ],
    currentObjective: 'work',
    shedClasses: ['c/chat'],
    workScale: 1.23456,
    clientClassOf: (id) => (id === 'a' ? 'phone' : undefined),
    counters: { profiles: 3, loads: 7, outcomes: 40, badMessages: 2 },
    ...over,
  };
}

describe('dashboardSnapshot', () => {
  it('sums each class over every client: placements by side, shed pairs, attainment and latency weighted by outcomes', () => {
    const s = dashboardSnapshot(source(), INFO, 100);
    expect(s.classes).toEqual([
      {
        name: 'short',
        slaMs: 1500,
        ttftMs: null,
        tpotMs: null,
        clients: 3,
        allServer: 1,
        allClient: 1,
        shed: 0,
        attainment: 0.625, // (1 x 10 + 0.5 x 30) / 40
        planOutcomes: 40,
        outcomes: 42,
        failures: 2,
        predictedE2eMs: 175, // (100 x 4 + 200 x 12) / 16
        observedE2eMs: 165, // (120 x 4 + 180 x 12) / 16
      },
      {
        name: 'chat',
        slaMs: null,
        ttftMs: 400,
        tpotMs: 50,
        clients: 3,
        allServer: 1,
        allClient: 0,
        shed: 1,
        attainment: null,
        planOutcomes: 0,
        outcomes: 2,
        failures: 2,
        predictedE2eMs: null,
        observedE2eMs: null,
      },
    ]);
    expect(s.server).toEqual({ serverId: 'srv', utilisation: 0.123, queueDepth: 4, activeSessions: 0, meanQueueMs: 3.1, workScale: 1.235 });
    expect(s.executorList).toEqual([
      { id: 'other', address: '10.0.0.2:50051', clients: 1, utilisation: 0.988, draining: true, lastReportUnixMs: 5000 },
      { id: 'srv', address: '', clients: 0, utilisation: 0.123, draining: false, lastReportUnixMs: 6000 },
    ]);
    expect(s).toMatchObject({
      executors: 2,
      objective: 'work',
      shed: ['c/chat'],
      clientsTotal: 3,
      telemetry: { profiles: 3, loads: 7, outcomes: 40, dropped: 2 },
    });
  });

  it('lists clients in order with their class, rounded figures and per-class observations, at most maxClients of them', () => {
    const s = dashboardSnapshot(source(), INFO, 2);
    expect(s.clients.map((c) => [c.clientId, c.clientClass])).toEqual([
      ['a', 'phone'],
      ['b', ''],
    ]);
    expect(s.clientsTotal).toBe(3);
    expect(s.clients[0].classes[0]).toEqual({
      name: 'short',
      placement: 'SSS',
      slaMs: 1500,
      ttftMs: 0,
      tpotMs: 0,
      predictedLatencyMs: 812.3,
      predictedServerWorkMs: 12,
      feasible: true,
      shed: false,
      planOutcomes: 10,
      attainment: 1,
      predictedE2eMs: 100,
      observedE2eMs: 120,
    });
    expect(s.clients[0].classes[1]).toMatchObject({ name: 'chat', attainment: null, predictedE2eMs: null, observedE2eMs: null });
    // Every client counts in the per-class figures, listed or not.
    expect(s.classes[1].shed).toBe(1);
  });

  it("shows a phased plan's decode placement beside its prefill's, and none for a plan whose phases agree", () => {
    const phased = plan('a', 'SSS', 'CCS');
    const classes = [
      { ...phased.classes[0], decodePlacement: 'CCC' },
      { ...phased.classes[1], decodePlacement: 'CCS' },
    ];
    const s = dashboardSnapshot(source({ plans: () => [{ ...phased, classes }] }), INFO, 10);
    expect(s.clients[0].classes[0]).toMatchObject({ placement: 'SSS', decodePlacement: 'CCC' });
    expect(s.clients[0].classes[1].placement).toBe('CCS');
    expect(s.clients[0].classes[1]).not.toHaveProperty('decodePlacement');
  });

  it('shows no server before an executor reported load, and the same JSON for the same state', () => {
    const s = dashboardSnapshot(source({ load: undefined, followedExecutor: undefined, executorIds: [] }), INFO, 100);
    expect(s.server).toBeNull();
    expect(s.executors).toBe(0);
    expect(JSON.stringify(dashboardSnapshot(source(), INFO, 100))).toBe(JSON.stringify(dashboardSnapshot(source(), INFO, 100)));
  });

  it("names the executor a client's plan names, and nothing for a plan that names none", () => {
    const on = { ...plan('a', 'SSS', 'CCS'), executor: { id: 'other', address: '10.0.0.2:50051' } };
    const s = dashboardSnapshot(source({ plans: () => [on, plan('b', 'CCC', 'CCS')] }), INFO, 10);
    expect(s.clients.map((c) => c.executor)).toEqual(['other', undefined]);
    expect('executor' in s.clients[1]).toBe(false);
  });
});
