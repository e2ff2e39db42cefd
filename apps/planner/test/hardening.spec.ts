import * as grpc from '@grpc/grpc-js';
import {
  ClientProfile,
  GenerationOutcome,
  HealthClient,
  PlannerServiceClient,
  ServerLoad,
  ServingStatus,
  Subjects,
  type ClientPlan,
  type ListPlansRequest,
  type ListPlansResponse,
} from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import {
  capturingLogger,
  clientProfile,
  eventually,
  planOutcome,
  sameStageTimes,
  serverLoad,
  stageTimes,
  startNatsServer,
  type NatsServerHandle,
} from '@tandem/testkit';
import {
  DEFAULT_PLANS_PAGE_SIZE,
  MAX_PLANS_PAGE_SIZE,
  PlanMaker,
  PlannerServer,
  TelemetryError,
  UNMEASURED_LINK_BYTES_PER_MS,
  validateLoad,
  validateProfile,
  type PlannerServerOptions,
} from '../src';
import { makerOptions, plannerOptions, startLivePlanner, THREE_STAGES, type LivePlanner } from './fixtures';

// Three stages, one class of 10-token prompts and one new token (the hand-checkable client of
// outcomes.int.spec.ts): the device runs embed 1 ms, block 5 ms, head 100 ms; the server 0.1 ms each.
const MODEL = 'm';
const silent = createLogger({ name: 'test', level: 'silent' });

const profile = (clientId: string, ms: readonly number[] = [1, 5, 100]): ClientProfile => clientProfile({ clientId, modelId: MODEL, stages: stageTimes(ms) });
const load = (serverId = 'srv', ms = 0.1, utilisation = 0): ServerLoad =>
  serverLoad({ serverId, modelId: MODEL, utilisation, stages: sameStageTimes(THREE_STAGES.length, ms) });

function maker(): PlanMaker {
  return new PlanMaker(makerOptions());
}

function planner(over: Partial<PlannerServerOptions> = {}): PlannerServer {
  return new PlannerServer(plannerOptions({ log: silent, modelId: MODEL, ...over }));
}

/** Sets `value` at `path` ('stages[1].decodeMs', 'uplink') of `message`. */
function setAt(message: object, path: string, value: unknown): void {
  const keys = path.replace(/\[(\d+)\]/g, '.$1').split('.');
  let at = message as Record<string, unknown>;
  for (const k of keys.slice(0, -1)) at = at[k] as Record<string, unknown>;
  at[keys[keys.length - 1]] = value;
}

/** Asserts an error message names the field, the rule and the value, and fits in 1 KiB. */
function expectClear(message: string, field: string, value: string): void {
  expect(message).toContain(field);
  expect(message).toMatch(/must /);
  expect(message).toContain(value);
  expect(Buffer.byteLength(message)).toBeLessThan(1024);
}

describe('a real planner on a real nats-server survives any telemetry message', () => {
  let live: LivePlanner;
  let health: HealthClient;

  beforeAll(async () => {
    live = await startLivePlanner({ log: silent, modelId: MODEL });
    health = new HealthClient(live.addr, grpc.credentials.createInsecure());
    live.nc.publish(Subjects.serverLoad('srv'), ServerLoad.encode(load()).finish());
    live.nc.publish(Subjects.clientProfile('good-1'), ClientProfile.encode(profile('good-1')).finish());
    await eventually(() => live.server.plans().some((p) => p.clientId === 'good-1'), { what: 'a first plan' });
  });

  afterAll(async () => {
    health?.close();
    await live?.stop();
  });

  const serving = (): Promise<ServingStatus> => new Promise((resolve, reject) => health.check({ service: '' }, (e, r) => (e ? reject(e) : resolve(r.status))));

  /** Publishes `bad`, then a good profile of a new client: the planner must drop the first (by `reason`) and plan the second. */
  async function dropsAndCarriesOn(subject: string, bad: Uint8Array, reason: string): Promise<void> {
    const before = live.server.counters.dropped[reason] ?? 0;
    live.nc.publish(subject, bad);
    await eventually(() => (live.server.counters.dropped[reason] ?? 0) === before + 1, { what: `a drop counted as ${reason}` });
    const id = `after-${live.server.counters.badMessages}`;
    live.nc.publish(Subjects.clientProfile(id), ClientProfile.encode(profile(id)).finish());
    await eventually(() => live.server.plans().some((p) => p.clientId === id), { what: `a plan for ${id} after the bad message` });
    expect(await serving()).toBe(ServingStatus.SERVING);
  }

  it('drops a ClientProfile whose stage time is huge but finite (1e308), and keeps planning', async () => {
    const p = profile('huge');
    p.stages[1] = { ...p.stages[1], prefillMsPerToken: 1e308 };
    await dropsAndCarriesOn(Subjects.clientProfile('huge'), ClientProfile.encode(p).finish(), 'ClientProfile.stages[].prefillMsPerToken:range');
    expect(live.server.plans().some((x) => x.clientId === 'huge')).toBe(false);
  });

  it('drops a ServerLoad whose stage time is huge but finite, and keeps the load it plans from', async () => {
    const l = load();
    l.stages[2] = { ...l.stages[2], decodeMs: 1e308 };
    await dropsAndCarriesOn(Subjects.serverLoad('srv'), ServerLoad.encode(l).finish(), 'ServerLoad.stages[].decodeMs:range');
  });

  it.each([
    ['a link throughput of 0', { uplink: { latencyMs: 0, bytesPerMs: 0 } }, 'ClientProfile.uplink.bytesPerMs:positive'],
    ['an empty model id', { modelId: '' }, 'ClientProfile.modelId:required'],
    ['a tiny throughput (transfer times beyond any range)', { downlink: { latencyMs: 0, bytesPerMs: 1e-300 } }, 'ClientProfile.downlink.bytesPerMs:range'],
    ['a latency of a year', { uplink: { latencyMs: 3.15e10, bytesPerMs: 100 } }, 'ClientProfile.uplink.latencyMs:range'],
  ])('drops a ClientProfile with %s, counted by reason', async (_what, over, reason) => {
    const p = { ...profile('bad-profile'), ...over };
    await dropsAndCarriesOn(Subjects.clientProfile('bad-profile'), ClientProfile.encode(p).finish(), reason);
  });

  it('drops a ServerLoad with an empty model id, and one of an undecodable payload', async () => {
    await dropsAndCarriesOn(Subjects.serverLoad('srv'), ServerLoad.encode({ ...load(), modelId: '' }).finish(), 'ServerLoad.modelId:required');
    await dropsAndCarriesOn(Subjects.serverLoad('srv'), new Uint8Array([0xff, 0xff, 0xff, 0x07]), 'ServerLoad:decode');
  });

  it('drops a GenerationOutcome with an empty model id', async () => {
    const plan = live.server.plans().find((p) => p.clientId === 'good-1')!;
    const o = planOutcome(plan, { modelId: '', ttftMs: 10, e2eMs: 10 });
    await dropsAndCarriesOn(Subjects.outcome('good-1'), GenerationOutcome.encode(o).finish(), 'GenerationOutcome.modelId:required');
    expect(live.server.counters.outcomes).toBe(0);
  });

  it('refuses a WatchPlans of a 20,000-character client id with INVALID_ARGUMENT, its echo cut to fit in 1 KiB', async () => {
    const pc = new PlannerServiceClient(live.addr, grpc.credentials.createInsecure());
    try {
      const err = await new Promise<grpc.ServiceError>((resolve) => {
        const call = pc.watchPlans({ clientId: 'x'.repeat(20_000) });
        call.on('data', () => undefined);
        call.on('error', resolve);
      });
      expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
      expectClear(err.details, 'client_id', "'xxxxxxxx");
      expect(live.server.watchedClients).toHaveLength(0);
    } finally {
      pc.close();
    }
  });

  it('forgets the watcher set of a client whose last plan stream closed', async () => {
    const pc = new PlannerServiceClient(live.addr, grpc.credentials.createInsecure());
    try {
      const calls = [1, 2].map(() => pc.watchPlans({ clientId: 'watched' }));
      for (const c of calls) c.on('error', () => undefined);
      await eventually(() => live.server.watchedClients.includes('watched'), { what: 'the watchers registered' });
      calls[0].cancel();
      await new Promise((r) => setTimeout(r, 100));
      expect(live.server.watchedClients).toContain('watched'); // one stream is still open
      calls[1].cancel();
      await eventually(() => !live.server.watchedClients.includes('watched'), { what: 'the set removed with its last watcher' });
    } finally {
      pc.close();
    }
  });
});

describe('telemetry validation', () => {
  const ctx = { stageCount: THREE_STAGES.length, modelId: MODEL };
  const reasonOf = (fn: () => void): TelemetryError => {
    try {
      fn();
    } catch (err) {
      return err as TelemetryError;
    }
    throw new Error('no error thrown');
  };

  // Each row: the field, the value set there (at `at` when it is not the field itself), how the message shows it, the rule.
  it.each<[string, unknown, string, string, string?]>([
    ['stages[1].prefillMsPerToken', 1e308, '1e+308', 'range'],
    ['stages[0].decodeMs', Number.NaN, 'NaN', 'range'],
    ['stages[2].decodeMs', -1, '-1', 'range'],
    ['stages[1].stage', 0, '0', 'unique'],
    ['stages[2].stage', 7, '7', 'range'],
    ['uplink.bytesPerMs', { latencyMs: 1, bytesPerMs: 0 }, '0', 'positive', 'uplink'],
    ['downlink.bytesPerMs', { latencyMs: 1, bytesPerMs: Infinity }, 'Infinity', 'range', 'downlink'],
    ['uplink.latencyMs', { latencyMs: 1e9, bytesPerMs: 10 }, '1000000000', 'range', 'uplink'],
    ['modelId', '', "''", 'required'],
    ['modelId', 'other', "'other'", 'model'],
    ['modelId', 'x'.repeat(20_000), "'xxxxxxxx", 'length'],
    ['clientClass', 'c'.repeat(20_000), "'cccccccc", 'length'],
    ['clientId', 'i'.repeat(20_000), "'iiiiiiii", 'pattern'],
    ['stepOverheadMs', -1, '-1', 'range'],
  ])('refuses a ClientProfile with a bad %s, naming field, rule and value in under 1 KiB', (field, bad, value, rule, at = field) => {
    const p = profile('c1');
    setAt(p, at, bad);
    const err = reasonOf(() => validateProfile(p, ctx));
    expect(err).toBeInstanceOf(TelemetryError);
    expectClear(err.message, `ClientProfile.${field}`, value);
    expect(err.reason).toBe(`ClientProfile.${field.replace(/\[\d+\]/g, '[]')}:${rule}`);
  });

  it.each<[string, unknown, string, string, string?]>([
    ['stages[0].prefillMsPerToken', 1e308, '1e+308', 'range'],
    ['stages', sameStageTimes(2, 0.1), '2 stages', 'count'],
    ['wholeModel.decodeMs', { stage: 0, prefillMsPerToken: 1, decodeMs: -2, samples: 1 }, '-2', 'range', 'wholeModel'],
    [
      'wholeModel.prefillMsPerTokenFitted',
      { stage: 0, prefillMsPerToken: 1, decodeMs: 2, samples: 1, prefillMsPerTokenFitted: -0.5 },
      '-0.5',
      'range',
      'wholeModel',
    ],
    ['stages[1].prefillFixedMs', Number.NaN, 'NaN', 'range'],
    ['stages[2].decodeMsPerContextToken', -0.01, '-0.01', 'range'],
    [
      'wholeModel.decodeFixedMs',
      { stage: 0, prefillMsPerToken: 1, decodeMs: 2, samples: 1, decodeFixedMs: Number.POSITIVE_INFINITY },
      'Infinity',
      'range',
      'wholeModel',
    ],
    ['utilisation', 1.5, '1.5', 'range'],
    ['meanQueueMs', 1e300, '1e+300', 'range'],
    ['decodeStretch', 0.5, '0.5', 'range'],
    ['splitDecodeStretch', 0.9, '0.9', 'range'],
    ['queueWaits.splitDecodeMs', { decodeMs: 0, promptMs: 0, longPromptMs: 0, splitDecodeMs: -3 }, '-3', 'range', 'queueWaits'],
    ['queueWaits.promptMs', { decodeMs: 0, promptMs: Number.NaN, longPromptMs: 0, splitDecodeMs: 0 }, 'NaN', 'range', 'queueWaits'],
    ['longPromptStretch', Number.POSITIVE_INFINITY, 'Infinity', 'range'],
    ['longStepTokens', 1e9, '1000000000', 'range'],
    [
      'overhead.msPerKibIn',
      { msPerMessageIn: 0, msPerMessageOut: 0, msPerKibIn: 1e12, msPerKibOut: 0, idleMsPerS: 0, samples: 20 },
      '1000000000000',
      'range',
      'overhead',
    ],
    ['modelId', '', "''", 'required'],
    ['serverId', 's'.repeat(5000), "'ssssss", 'pattern'],
    ['address', 'executor-without-port', "'executor-without-port'", 'pattern'],
    ['address', 'exec:0', "'exec:0'", 'pattern'],
    ['address', 'exec/x:50051', "'exec/x:50051'", 'pattern'],
    ['address', `${'a'.repeat(5000)}:1`, "'aaaaaa", 'length'],
  ])(
    'refuses a ServerLoad with a bad %s, naming field, rule and value in under 1 KiB with a bad %s, naming field, rule and value in under 1 KiB',
    (field, bad, value, rule, at = field) => {
      const l = load();
      setAt(l, at, bad);
      const err = reasonOf(() => validateLoad(l, ctx));
      expectClear(err.message, `ServerLoad.${field}`, value);
      expect(err.reason).toBe(`ServerLoad.${field.replace(/\[\d+\]/g, '[]')}:${rule}`);
    },
  );

  it("refuses a message from another sender's subject", () => {
    expect(reasonOf(() => validateProfile(profile('a'), { ...ctx, subject: Subjects.clientProfile('b') })).reason).toBe('ClientProfile.clientId:subject');
    expect(reasonOf(() => validateLoad(load('a'), { ...ctx, subject: Subjects.serverLoad('b') })).reason).toBe('ServerLoad.serverId:subject');
  });

  it('prices a link direction left out of the profile as the stated unmeasured link, and one stated as stated', () => {
    const m = maker();
    const cls = m.opts.classes[0];
    const p = { ...profile('c1'), uplink: undefined, downlink: { latencyMs: 3, bytesPerMs: 7 } };
    const inst = m.instance(p, load(), cls)!;
    expect(inst.uplink).toEqual({ latencyMs: 0, bytesPerMs: UNMEASURED_LINK_BYTES_PER_MS });
    expect(inst.downlink).toEqual({ latencyMs: 3, bytesPerMs: 7 });
  });
});

describe('planning errors are caught, logged and counted, never fatal', () => {
  let p: PlannerServer;
  afterEach(async () => {
    await p.stop();
  });

  it('a client whose planning throws keeps its plan in force; the others are planned, and later rounds run', async () => {
    const m = maker();
    const plan = m.plan.bind(m);
    let boom = false;
    m.plan = (client, ...rest) => {
      if (boom && client.clientId === 'boom') throw new Error('cost model failed: Infinity in instanceFromMeasured');
      return plan(client, ...rest);
    };
    const { log, lines } = capturingLogger('info');
    p = planner({ maker: m, log });
    p.onLoad(load());
    p.onProfile(profile('boom'));
    p.onProfile(profile('ok'));
    await eventually(() => p.plans().length === 2, { what: 'both planned' });
    const held = p.plans().find((x) => x.clientId === 'boom')!;
    boom = true;
    // a much busier server re-plans every client in one (timer-driven) round
    p.onLoad(load('srv', 5, 0.5));
    await eventually(() => p.counters.planErrors >= 1 && p.counters.passes >= 2, { what: 'a round with an error' });
    expect(p.plans().find((x) => x.clientId === 'boom')).toEqual(held);
    const err = lines().find((l) => l.msg === 'planning a client failed; its plan in force stays');
    expect(err).toMatchObject({ clientId: 'boom', err: 'cost model failed: Infinity in instanceFromMeasured' });
    // the planner keeps planning: a new client after the failure gets a plan
    p.onProfile(profile('later'));
    await eventually(() => p.plans().some((x) => x.clientId === 'later'), { what: 'a plan after the failure' });
  });
});

describe("the planner plans from one executor's load, kept per executor id", () => {
  let p: PlannerServer;
  afterEach(async () => {
    await p.stop();
  });

  it("follows the first executor; another one's reports do not overwrite its load until it has been silent for the TTL", () => {
    let now = 1_000_000;
    p = planner({ now: () => now, clientTtlMs: 10_000 });
    p.onProfile(profile('c1'));
    p.onLoad(load('exec-a', 0.1));
    p.replan();
    const priced = p.plans()[0].classes[0].predictedServerWork;
    // exec-b reports a server 50 times slower: ignored while exec-a reports
    for (let i = 0; i < 3; i++) {
      now += 1000;
      p.onLoad(load('exec-b', 5, 0.5));
      p.replan();
    }
    now += 1000;
    p.onLoad(load('exec-a', 0.1));
    p.replan();
    expect(p.followedExecutor).toBe('exec-a');
    expect(p.counters.otherLoads).toBe(3);
    expect(p.plans()[0].classes[0].predictedServerWork).toBe(priced);
    expect(p.executorIds.sort()).toEqual(['exec-a', 'exec-b']);
    // exec-a silent for longer than the TTL: the next report of exec-b is followed
    now += 10_001;
    p.onProfile(profile('c1')); // the client itself still reports
    p.onLoad(load('exec-b', 5));
    expect(p.followedExecutor).toBe('exec-b');
    p.replan();
    expect(p.plans()[0].classes[0].predictedServerWork).not.toBe(priced);
  });
});

describe('plan epochs', () => {
  let p: PlannerServer;
  afterEach(async () => {
    await p.stop();
  });

  it('one re-plan round of 2000 changed clients takes one epoch, at the wall clock, not 2000 ms ahead of it', async () => {
    p = planner({ sliceMs: 5 });
    for (let i = 0; i < 2000; i++) p.onProfile(profile(`c${i}`));
    const t0 = Date.now();
    p.onLoad(load());
    await eventually(() => p.counters.passes >= 1 && p.plans().length === 2000, { timeoutMs: 30_000, what: 'the first round' });
    const epochs = new Set(p.plans().map((x) => x.epoch));
    expect(epochs.size).toBe(1);
    const [epoch] = epochs;
    expect(epoch).toBeGreaterThanOrEqual(t0);
    expect(epoch).toBeLessThanOrEqual(Date.now());
    // the next round that changes plans takes a later epoch, again not ahead of the clock
    await new Promise((r) => setTimeout(r, 5));
    for (let i = 0; i < 2000; i++) p.onProfile(profile(`c${i}`, [1, 5, 5]));
    await eventually(() => p.plans().every((x) => x.epoch > epoch), { timeoutMs: 30_000, what: 'the second round' });
    const second = new Set(p.plans().map((x) => x.epoch));
    expect(second.size).toBe(1);
    expect([...second][0]).toBeLessThanOrEqual(Date.now());
  });

  it('epochs still increase per client when the clock stands still, and rejoin the clock when it moves', () => {
    let now = 5000;
    p = planner({ now: () => now });
    p.onLoad(load());
    p.onProfile(profile('a'));
    p.onProfile(profile('b'));
    p.replan();
    const first = p.plans().map((x) => x.epoch);
    expect(first).toEqual([5000, 5000]);
    p.onProfile(profile('a', [1, 5, 5]));
    p.replan();
    expect(p.plans()[0].epoch).toBe(5001); // the clock did not move: last + 1
    now = 9000;
    p.onProfile(profile('a', [1, 5, 100]));
    p.onProfile(profile('b', [1, 5, 5]));
    p.replan();
    expect(p.plans().map((x) => x.epoch)).toEqual([9000, 9000]);
  });

  it('logs per-client changes at debug and one info line per round', async () => {
    const { log, lines } = capturingLogger('info');
    p = planner({ log });
    for (let i = 0; i < 300; i++) p.onProfile(profile(`c${i}`));
    p.onLoad(load());
    await eventually(() => p.plans().length === 300 && p.counters.passes >= 1, { what: 'the round' });
    const info = lines().filter((l) => l.level === 30);
    expect(info.filter((l) => l.msg === 'plan changed')).toHaveLength(0);
    const rounds = info.filter((l) => l.msg === 'plans changed');
    expect(rounds).toHaveLength(1);
    expect(rounds[0]).toMatchObject({ changed: 300, replanned: 300, errors: 0, epoch: p.plans()[0].epoch });
  });
});

describe('ListPlans pages', () => {
  let nats: NatsServerHandle;
  let server: PlannerServer;
  let client: PlannerServiceClient;
  const N = 2500;

  beforeAll(async () => {
    nats = await startNatsServer();
    server = planner({ natsUrl: nats.url, clientTtlMs: 600_000, debounceMs: 1000 });
    const addr = `127.0.0.1:${(await server.start()).port}`;
    client = new PlannerServiceClient(addr, grpc.credentials.createInsecure());
    server.onLoad(load());
    for (let i = 0; i < N; i++) server.onProfile(profile(`c${String(i).padStart(5, '0')}`));
    server.replan();
  });

  afterAll(async () => {
    client?.close();
    await server?.stop();
    await nats?.stop();
  });

  const list = (r: Partial<ListPlansRequest>): Promise<ListPlansResponse> =>
    new Promise((resolve, reject) =>
      client.listPlans({ pageSize: 0, pageToken: '', ...r }, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (e, res) =>
        e ? reject(e) : resolve(res),
      ),
    );

  it('answers a request without a page size (an old caller) with the default page and a token', async () => {
    const r = await list({});
    expect(r.plans).toHaveLength(DEFAULT_PLANS_PAGE_SIZE);
    expect(r.observations.map((o) => o.clientId)).toEqual(r.plans.map((p) => p.clientId));
    expect(r.nextPageToken).not.toBe('');
  });

  it('pages through every plan in client id order, each once, ending with an empty token', async () => {
    const seen: ClientPlan[] = [];
    let token = '';
    let pages = 0;
    do {
      const r = await list({ pageSize: 700, pageToken: token });
      seen.push(...r.plans);
      token = r.nextPageToken;
      pages++;
    } while (token !== '');
    expect(pages).toBe(Math.ceil(N / 700));
    expect(seen.map((p) => p.clientId)).toEqual(server.plans().map((p) => p.clientId));
    expect(new Set(seen.map((p) => p.clientId)).size).toBe(N);
  });

  it('does not shift a page when a client before it is forgotten or added between calls', async () => {
    const first = await list({ pageSize: 10 });
    server.onProfile(profile('a-new-client')); // sorts before every cNNNNN id
    server.replan();
    const second = await list({ pageSize: 10, pageToken: first.nextPageToken });
    expect(second.plans[0].clientId).toBe('c00010');
  });

  it('serves a page size above the largest as the largest', async () => {
    const r = await list({ pageSize: 1_000_000 });
    expect(r.plans).toHaveLength(Math.min(MAX_PLANS_PAGE_SIZE, server.plans().length));
  });

  it('refuses a page token it did not issue with INVALID_ARGUMENT naming page_token, under 1 KiB', async () => {
    for (const token of ['nonsense!', 'x'.repeat(20_000), Buffer.from('v1:', 'utf8').toString('base64url')]) {
      const err = await list({ pageToken: token }).then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      expect(err?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(err!.details).toMatch(/^page_token must be a next_page_token from an earlier ListPlans answer, given /);
      expect(Buffer.byteLength(err!.details)).toBeLessThan(1024);
    }
  });
});
