import { connect, type NatsConnection } from '@nats-io/transport-node';
import { PlanMaker, PlannerServer, type PlannerServerOptions } from '@tandem/planner';
import { ClientProfile, GenerationOutcome, OutcomeStatus, ServerLoad, Subjects, type ClientPlan } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import {
  classObservations,
  clientProfile,
  eventually,
  freePort,
  PLAN_SETTINGS,
  PLANNER_SETTINGS,
  planOutcome,
  serverLoad,
  stageTimes,
  startNatsServer,
  type NatsServerHandle,
} from '@tandem/testkit';
import { formatPlans, observationsTable, planTable } from '../src/views/plans';
import { run } from './run-cli';

// A hand-checkable planner: three stages, one class of 10-token prompts and no decode step.
// The device runs embed and the block in 10 ms each but its head takes 1000 ms; the server
// runs every stage in 1 ms (1 ms of work). Against 90 ms (SLA 100 ms x margin 0.9) all on the
// device misses, so the least server work that meets it is the head alone on the server: CCS.
const stages = [
  { name: 'embed', inBytesPerToken: 8 },
  { name: 'block.0', inBytesPerToken: 256 },
  { name: 'head', inBytesPerToken: 256 },
];
const profile: ClientProfile = clientProfile({ clientId: 'dev-1', clientClass: 'handheld', stages: stageTimes([1, 1, 100]) });
const load: ServerLoad = serverLoad({
  // The head's one sampled row costs 1 ms (a generation's prefill runs it on the last position only).
  stages: stageTimes([0.1, 0.1, 0.1], [0.1, 0.1, 1], 5),
});

/** A silent planner of any model on 127.0.0.1 port 0 (clients kept 60 s, work minimised at any load), with `over` on top; and its host:port. */
async function startPlanner(maker: PlanMaker, natsUrl: string, over: Partial<PlannerServerOptions>): Promise<{ server: PlannerServer; addr: string }> {
  const server = new PlannerServer({
    maker,
    log: createLogger({ name: 'test', level: 'silent' }),
    ...PLANNER_SETTINGS,
    natsUrl,
    modelId: '',
    ...over,
  });
  return { server, addr: `127.0.0.1:${(await server.start()).port}` };
}

/** A planner started as startPlanner does, on a nats-server of its own, with the test's connection to it; stop() closes and stops all three. */
interface LivePlanner {
  readonly nats: NatsServerHandle;
  readonly nc: NatsConnection;
  readonly server: PlannerServer;
  readonly addr: string;
  stop(): Promise<void>;
}

async function startLivePlanner(maker: PlanMaker, over: Partial<PlannerServerOptions>): Promise<LivePlanner> {
  const nats = await startNatsServer();
  let started: { server: PlannerServer; addr: string } | undefined;
  let nc: NatsConnection | undefined;
  const stop = async (): Promise<void> => {
    await nc?.close();
    await started?.server.stop();
    await nats.stop();
  };
  try {
    started = await startPlanner(maker, nats.url, over);
    nc = await connect({ servers: nats.url });
    return { nats, nc, ...started, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

describe('tandem plans against a real planner', () => {
  let live: LivePlanner;

  beforeAll(async () => {
    const maker = new PlanMaker({
      ...PLAN_SETTINGS,
      stages,
      classes: [{ name: 'short', maxPromptTokens: 10, expectedNewTokens: 1, slaMs: 1000 }],
      slaOverrides: { handheld: { short: 100 } },
    });
    live = await startLivePlanner(maker, { debounceMs: 5 });
  });

  afterAll(() => live?.stop());

  it('lists no plans before any telemetry, in both formats', async () => {
    const json = await run(['plans', '--planner', live.addr, '--json']);
    expect(json).toMatchObject({ code: 0, stderr: '' });
    // Canonical protobuf JSON leaves out fields at their default value: an empty list too.
    expect(JSON.parse(json.stdout)).toEqual({});
    const text = await run(['plans', '--planner', live.addr]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^no plans yet/);
  });

  it('lists the plan the planner made from a profile and a load sent over NATS', async () => {
    live.nc.publish(Subjects.serverLoad(load.serverId), ServerLoad.encode(load).finish());
    live.nc.publish(Subjects.clientProfile(profile.clientId), ClientProfile.encode(profile).finish());
    await live.nc.flush();
    await eventually(() => live.server.plans().length === 1, { what: 'a plan for dev-1', timeoutMs: 5000 });

    const r = await run(['plans', '--planner', live.addr, '--json']);
    expect(r).toMatchObject({ code: 0, stderr: '' });
    const body = JSON.parse(r.stdout);
    expect(body.plans).toHaveLength(1);
    const plan = body.plans[0];
    expect(plan).toMatchObject({ clientId: 'dev-1', algorithm: 'dp' });
    expect(plan.epoch).toBeGreaterThan(0);
    expect(plan.classes).toHaveLength(1);
    const c = plan.classes[0];
    expect(c).toMatchObject({ name: 'short', maxPromptTokens: 10, expectedNewTokens: 1, placement: 'CCS', slaMs: 100, feasible: true });
    expect(c.predictedServerWork).toBeCloseTo(1, 6);
    // 20 ms on the device plus 1 ms on the server, and transfers of a few hundred bytes at 1e6 bytes/ms.
    expect(c.predictedLatencyMs).toBeGreaterThanOrEqual(21);
    expect(c.predictedLatencyMs).toBeLessThan(22);

    const text = await run(['plans', '--planner', live.addr]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain(`client dev-1  epoch ${plan.epoch}  algorithm dp`);
    expect(text.stdout).toMatch(/^ {2}short +CCS +100 +21(\.\d)? +1\.0 +yes$/m);
  });

  it('shows what the planner observed of the outcomes an agent published, predicted against observed', async () => {
    const plan = live.server.plans().find((p) => p.clientId === 'dev-1')!;
    const c = plan.classes[0];
    const outcome = (ok: boolean, e2eMs: number): GenerationOutcome =>
      planOutcome(plan, {
        clientClass: 'handheld',
        newTokens: ok ? 1 : 0,
        ttftMs: ok ? e2eMs : 0,
        e2eMs,
        slaMet: ok && e2eMs <= c.slaMs,
        status: ok ? OutcomeStatus.OUTCOME_STATUS_OK : OutcomeStatus.OUTCOME_STATUS_FAILED,
      });
    // five generations that met the SLA in 30 ms each (the plan predicted about 21), then one that failed
    for (let i = 0; i < 5; i++) live.nc.publish(Subjects.outcome('dev-1'), GenerationOutcome.encode(outcome(true, 30)).finish());
    live.nc.publish(Subjects.outcome('dev-1'), GenerationOutcome.encode(outcome(false, 4)).finish());
    await live.nc.flush();
    await eventually(() => live.server.counters.outcomes === 6, { what: 'six outcomes taken', timeoutMs: 5000 });

    const r = await run(['plans', '--planner', live.addr, '--json']);
    expect(r).toMatchObject({ code: 0, stderr: '' });
    const body = JSON.parse(r.stdout);
    expect(body.observations).toHaveLength(1);
    expect(body.observations[0].clientId).toBe('dev-1');
    const o = body.observations[0].classes[0];
    expect(o).toMatchObject({
      name: 'short',
      outcomes: 6,
      failures: 1,
      planOutcomes: 6,
      window: 5,
      attainmentTarget: 0.9,
      observedE2eMedianMs: 30,
      observedE2eMeanMs: 30,
      safetyFactor: 1,
    });
    expect(o.predictedE2eMedianMs).toBeCloseTo(c.predictedLatencyMs, 9);
    expect(o.e2eRatio).toBeCloseTo(30 / c.predictedLatencyMs, 9);
    // the plan has not been in force for the dwell (10 s by default): the factor in force is still 1
    expect(o.e2eCorrection).toBe(1);
    // attainment decays with a half-life of 20 outcomes: five met, weighed d^5..d^1, and the last one missed, weighed 1
    const d = 2 ** (-1 / 20);
    const met = [1, 2, 3, 4, 5].reduce((a, k) => a + d ** k, 0);
    expect(o.attainment).toBeCloseTo(met / (met + 1), 9);

    const text = await run(['plans', '--planner', live.addr]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain('  observed (attainment of the plan in force, target 90 %; latency over the last 5 successful generations)');
    expect(text.stdout).toMatch(
      /^ {2}class +outcomes +failed +attainment +e2e p50 pred\/obs ms +e2e mean pred\/obs ms +obs\/pred +correction +safety +per kind$/m,
    );
    const ratio = (30 / c.predictedLatencyMs).toFixed(2);
    expect(text.stdout).toMatch(new RegExp(`^ {2}short +6 +1 +82 % of 6 +21 / 30 +21 / 30 +${ratio.replace('.', '\\.')} +1\\.00 +1\\.00 +-$`, 'm'));
  });

  it('exits 1 with one line naming the address when no planner listens there', async () => {
    const port = await freePort();
    const r = await run(['plans', '--planner', `127.0.0.1:${port}`]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain(`the planner at 127.0.0.1:${port}`);
  });

  it.each([
    [['plans'], '--planner is required'],
    [['plans', '--planner', 'localhost'], "--planner must be host:port with a port in 1..65535, given 'localhost'"],
    [['plans', '--planner', '127.0.0.1:70000'], "--planner must be host:port with a port in 1..65535, given '127.0.0.1:70000'"],
    [['plans', '--planner', '127.0.0.1:1', '--verbose'], 'unknown option --verbose'],
    [['plans', '--planner', '127.0.0.1:1', '--json=yes'], "--json takes no value, given 'yes'"],
  ])('exits 2 on bad usage: %j', async (argv, message) => {
    const r = await run(argv);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(message);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
  });
});

describe('tandem plans pages through a planner with many clients', () => {
  let live: LivePlanner;
  const N = 2500; // more than the planner's default page (1000)

  beforeAll(async () => {
    const maker = new PlanMaker({ ...PLAN_SETTINGS, stages, classes: [{ name: 'short', maxPromptTokens: 10, expectedNewTokens: 1, slaMs: 100 }] });
    live = await startLivePlanner(maker, { clientTtlMs: 600_000, debounceMs: 1000 });
    live.server.onLoad(load);
    for (let i = 0; i < N; i++) live.server.onProfile({ ...profile, clientId: `dev-${String(i).padStart(4, '0')}` });
    live.server.replan();
    expect(live.server.plans()).toHaveLength(N);
  });

  afterAll(() => live?.stop());

  it("lists every client, each once and in order, with the planner's default page and with --page-size", async () => {
    const expected = live.server.plans().map((p) => p.clientId);
    for (const argv of [
      ['plans', '--planner', live.addr, '--json'],
      ['plans', '--planner', live.addr, '--json', '--page-size', '333'],
    ]) {
      const r = await run(argv);
      expect(r).toMatchObject({ code: 0, stderr: '' });
      const body = JSON.parse(r.stdout);
      expect(body.plans.map((p: { clientId: string }) => p.clientId)).toEqual(expected);
      expect(body.observations.map((o: { clientId: string }) => o.clientId)).toEqual(expected);
      expect(body.nextPageToken).toBeUndefined();
    }
    const text = await run(['plans', '--planner', live.addr, '--page-size', '5000']);
    expect(text.code).toBe(0);
    expect(text.stdout.match(/^client dev-\d{4} /gm)).toHaveLength(N);
  });

  it.each([['0'], ['5001'], ['x']])('exits 2 on --page-size %s', async (v) => {
    const r = await run(['plans', '--planner', live.addr, '--page-size', v]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`--page-size must be an integer in 1..5000, given '${v}'`);
  });
});

describe('tandem plans against planners that keep state (JetStream key-value)', () => {
  let nats: NatsServerHandle;
  const servers: PlannerServer[] = [];

  beforeAll(async () => {
    nats = await startNatsServer({ jetstream: true });
  });

  afterAll(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    await nats?.stop();
  });

  it('says which planner leads and which stands by, in both formats', async () => {
    const maker = (): PlanMaker =>
      new PlanMaker({ ...PLAN_SETTINGS, stages, classes: [{ name: 'short', maxPromptTokens: 10, expectedNewTokens: 1, slaMs: 100 }] });
    const state = { bucket: 'cli-plans', leaseMs: 500 };
    const leader = await startPlanner(maker(), nats.url, { state: { ...state, id: 'one' } });
    servers.push(leader.server);
    await eventually(() => leader.server.role === 'leader', { what: 'the first planner leading' });
    const standby = await startPlanner(maker(), nats.url, { state: { ...state, id: 'two' } });
    servers.push(standby.server);
    for (const [addr, role] of [
      [leader.addr, 'leader'],
      [standby.addr, 'standby'],
    ]) {
      const json = await run(['plans', '--planner', addr, '--json']);
      expect(JSON.parse(json.stdout)).toEqual({ plannerRole: role });
      const text = await run(['plans', '--planner', addr]);
      expect(text.stdout.split('\n')[0]).toBe(
        role === 'leader'
          ? 'planner: leader (it plans, and writes the plans to its state bucket)'
          : 'planner: standby (it serves the plans the leading planner wrote, and takes over if that one stops)',
      );
      expect(text.stdout).toContain('no plans yet');
    }
  });
});

describe('the observations table of tandem plans', () => {
  const base = classObservations({ name: 'chat' });

  it('is left out while no class has an outcome', () => {
    expect(observationsTable(undefined)).toBe('');
    expect(observationsTable({ clientId: 'a', classes: [base] })).toBe('');
  });

  it('shows a class at the all-server floor, and dashes where there is nothing to show yet', () => {
    const text = observationsTable({
      clientId: 'a',
      classes: [
        { ...base, outcomes: 12, failures: 12, planOutcomes: 3, attainment: 0, safetyFactor: 0.26, allServer: true },
        { ...base, name: 'doc', outcomes: 0 },
      ],
    });
    expect(text.split('\n')).toHaveLength(4); // heading, header, rule, one class (doc has no outcome)
    expect(text).toMatch(/^ {2}chat +12 +12 +0 % of 3 +- +- +1\.00 +1\.00 +all-server +-$/m);
  });

  it('shows the factors the planner applies per kind of placement', () => {
    const text = observationsTable({
      clientId: 'a',
      classes: [
        {
          ...base,
          outcomes: 9,
          kindCorrections: [
            { kind: 'split', ttft: 1, tpot: 1.304 },
            { kind: 'device', ttft: 1.1, tpot: 1 },
          ],
        },
      ],
    });
    expect(text).toMatch(/ +per kind$/m);
    expect(text).toMatch(/^ {2}chat +9 .* split TTFT×1\.00 TPOT×1\.30, device TTFT×1\.10 TPOT×1\.00$/m);
  });
});

describe('the plan table of tandem plans', () => {
  const cls = {
    name: 'long',
    maxPromptTokens: 64,
    expectedNewTokens: 8,
    placement: 'SSS',
    slaMs: 0,
    predictedLatencyMs: 120,
    predictedServerWork: 10,
    feasible: true,
    ttftMs: 200,
    tpotMs: 100,
    predictedTtftMs: 50,
    predictedTpotMs: 10,
    predictedTtftMsPerPromptToken: 0.5,
  };
  /** Plan epoch 3 of client 'a' by dp, created at 0, of class `cls` and no executor; `over` on top. */
  const plan = (over: Partial<ClientPlan> = {}): ClientPlan => ({
    clientId: 'a',
    epoch: 3,
    algorithm: 'dp',
    createdUnixMs: 0,
    alternates: [],
    classes: [cls],
    ...over,
  });

  it("shows a phased plan's prefill placement then its decode's, and a single placement as it is", () => {
    const table = planTable(
      plan({
        algorithm: 'dp-phased',
        classes: [
          { ...cls, decodePlacement: 'CCC' },
          { ...cls, name: 'short' },
        ],
      }),
    );
    expect(table).toMatch(/long\s+SSS -> CCC\s/);
    expect(table).toMatch(/short\s+SSS\s/);
    expect(table).not.toMatch(/short\s+SSS ->/);
  });

  it('names the executor in a column and the alternates in the header when the plan names one', () => {
    const table = planTable(plan({ executor: { id: 'exec-a', address: '10.0.0.1:50051' }, alternates: [{ id: 'exec-b', address: '10.0.0.2:50051' }] }));
    expect(table.split('\n')[0]).toMatch(/ {2}alternates exec-b$/);
    expect(table).toMatch(/^ {2}class +executor +placement /m);
    expect(table).toMatch(/^ {2}long +exec-a \(10\.0\.0\.1:50051\) +SSS /m);
    // Without one: no column, no alternates.
    const plain = planTable(plan());
    expect(plain).not.toMatch(/executor|alternates/);
  });
});

describe('the executors table of tandem plans', () => {
  it('lists each executor with its clients, utilisation and whether it drains, before the plans', () => {
    const text = formatPlans({
      plans: [],
      observations: [],
      nextPageToken: '',
      executors: [
        { id: 'exec-a', address: '10.0.0.1:50051', clients: 7, utilisation: 0.42, draining: false, lastReportUnixMs: Date.UTC(2026, 0, 1) },
        { id: 'exec-b', address: '', clients: 0, utilisation: 0.05, draining: true, lastReportUnixMs: Date.UTC(2026, 0, 1) },
      ],
    });
    const lines = text.split('\n');
    expect(lines[0]).toBe('executors');
    expect(text).toMatch(/^ {2}exec-a +10\.0\.0\.1:50051 +7 +42 % +no +2026-01-01T00:00:00\.000Z$/m);
    expect(text).toMatch(/^ {2}exec-b +- \(never assigned\) +0 +5 % +yes +2026-01-01T00:00:00\.000Z$/m);
    expect(text).toMatch(/no plans yet/);
    expect(formatPlans({ plans: [], observations: [], nextPageToken: '', executors: [] })).not.toMatch(/executors/);
  });
});
