import * as grpc from '@grpc/grpc-js';
import { PlannerServiceService, type ClientPlan, type PlannerServiceServer, type WatchPlansRequest, type WatchPlansResponse } from '@tandem/protocol';
import { bindInsecure, createLogger } from '@tandem/service-kit';
import { capturingLogger, eventually, freePort } from '@tandem/testkit';
import { executorsProblem, MAX_ALTERNATES, PlanFollower, privacyProblem } from './plan-follower';

const plan = (epoch: number, placement: string): ClientPlan => ({
  clientId: 'dev',
  epoch,
  algorithm: 'dp',
  createdUnixMs: epoch,
  alternates: [],
  classes: [
    {
      name: 'short',
      maxPromptTokens: 16,
      expectedNewTokens: 4,
      placement,
      slaMs: 100,
      predictedLatencyMs: 10,
      predictedServerWork: 1,
      feasible: true,
      ttftMs: 0,
      tpotMs: 0,
      predictedTtftMs: 10,
      predictedTpotMs: 0,
      predictedTtftMsPerPromptToken: 0,
    },
  ],
});

type FollowerOptions = ConstructorParameters<typeof PlanFollower>[0];
const silent = createLogger({ name: 'test', level: 'silent' });

/** A follower of client 'dev' of a three-stage model it can run whole, planned by `plannerAddr` (messages up to 1 MiB), with `over` on top; silent unless given `log`. */
function makeFollower(
  plannerAddr: string | undefined,
  over: Partial<FollowerOptions> = {},
  log: ConstructorParameters<typeof PlanFollower>[1] = silent,
): PlanFollower {
  return new PlanFollower({ plannerAddr, maxMessageBytes: 1 << 20, clientId: 'dev', stageCount: 3, canRun: () => true, ...over }, log);
}

/**
 * A planner stand-in on a real gRPC port: every WatchPlans stream gets `reason` (a message with
 * no plan, when given) and `plans()` at once, and `push` sends more plans on the open streams.
 */
async function stubPlanner(
  address: string,
  plans: () => ClientPlan[],
  reason?: string,
): Promise<{ port: number; push: (p: ClientPlan) => void; stop: () => void }> {
  const server = new grpc.Server();
  const calls = new Set<grpc.ServerWritableStream<WatchPlansRequest, WatchPlansResponse>>();
  const impl: PlannerServiceServer = {
    watchPlans: (call) => {
      calls.add(call);
      call.on('cancelled', () => calls.delete(call));
      if (reason !== undefined) call.write({ plan: undefined, noPlanReason: reason });
      for (const p of plans()) call.write({ plan: p, noPlanReason: '' });
    },
    listPlans: (_call, cb) => cb(null, { plans: [], observations: [], nextPageToken: '', executors: [] }),
  };
  server.addService(PlannerServiceService, impl);
  const port = await bindInsecure(server, address);
  return {
    port,
    push: (p) => {
      for (const c of calls) c.write({ plan: p, noPlanReason: '' });
    },
    stop: () => server.forceShutdown(),
  };
}

describe('PlanFollower epochs', () => {
  let follower: PlanFollower | undefined;
  afterEach(() => follower?.stop());

  it("within one stream takes only a higher epoch; after a planner restart takes the new stream's first plan even with an older epoch", async () => {
    // The first planner's clock ran ahead: its epochs are far in the future.
    const a = await stubPlanner('127.0.0.1:0', () => [plan(9_000_000, 'CCS')]);
    follower = makeFollower(`127.0.0.1:${a.port}`);
    follower.start();
    await eventually(() => follower!.current()?.epoch === 9_000_000, { what: 'the first plan' });
    a.push(plan(8_000_000, 'SSS')); // older on the same stream: a stale plan, ignored
    a.push(plan(9_000_001, 'CSS'));
    await eventually(() => follower!.current()?.epoch === 9_000_001, { what: 'the newer plan' });
    expect(follower.current()?.classes[0].placement).toBe('CSS');

    // The planner restarts on the same port with its clock behind the epoch held.
    a.stop();
    const b = await stubPlanner(`127.0.0.1:${a.port}`, () => [plan(1_000, 'SSS')]);
    try {
      await eventually(() => follower!.current()?.epoch === 1_000, { timeoutMs: 10_000, what: "the restarted planner's plan" });
      expect(follower.choose(10)).toMatchObject({ placement: 'SSS', epoch: 1_000 });
      b.push(plan(1_001, 'CSS'));
      await eventually(() => follower!.current()?.epoch === 1_001, { what: "the restarted planner's next plan" });
    } finally {
      b.stop();
    }
  });
});

describe('PlanFollower with several planners (PLANNER_ADDR a comma-separated list)', () => {
  let follower: PlanFollower | undefined;
  afterEach(() => follower?.stop());

  it('watches the first planner, moves to the next when its stream is lost and takes its plan, and comes back round', async () => {
    const a = await stubPlanner('127.0.0.1:0', () => [plan(100, 'CCS')]);
    const b = await stubPlanner('127.0.0.1:0', () => [plan(100, 'CCS'), plan(101, 'CSS')]);
    let a2: Awaited<ReturnType<typeof stubPlanner>> | undefined;
    try {
      follower = makeFollower(`127.0.0.1:${a.port}, 127.0.0.1:${b.port}`);
      follower.start();
      await eventually(() => follower!.current()?.epoch === 100, { what: "the first planner's plan" });
      expect(follower.plannerAddr).toBe(`127.0.0.1:${a.port}`);
      a.stop(); // the planner watched dies: the next stream goes to the other one
      await eventually(() => follower!.current()?.epoch === 101, { timeoutMs: 10_000, what: "the second planner's plan" });
      expect(follower.plannerAddr).toBe(`127.0.0.1:${b.port}`);
      expect(follower.connected).toBe(true);
      // The first planner is back (same port), the second dies: round to the first again.
      a2 = await stubPlanner(`127.0.0.1:${a.port}`, () => [plan(102, 'SSS')]);
      b.stop();
      await eventually(() => follower!.current()?.epoch === 102, { timeoutMs: 10_000, what: 'the first planner again' });
      expect(follower.plannerAddr).toBe(`127.0.0.1:${a.port}`);
    } finally {
      a.stop();
      b.stop();
      a2?.stop();
    }
  });

  it('refuses a list with a bad entry or too many entries, naming PLANNER_ADDR, the entry and the rule', () => {
    const make = (plannerAddr: string) => () => makeFollower(plannerAddr);
    expect(make('127.0.0.1:1,planner:0')).toThrow(
      /^PLANNER_ADDR entry 2 \(planner:0\) must be host:port with a port in 1\.\.65535, given '127\.0\.0\.1:1,planner:0'$/,
    );
    expect(make('127.0.0.1:1,')).toThrow(/^PLANNER_ADDR entry 2 is empty \(a comma too many\), given '127\.0\.0\.1:1,'$/);
    expect(make(Array.from({ length: 9 }, (_, i) => `p${i}:1`).join(','))).toThrow(/PLANNER_ADDR must list at most 8 addresses separated by commas, given 9/);
    expect(make('planner-1:50071 , planner-2:50071')().plannerAddr).toBe('planner-1:50071');
  });
});

describe('PlanFollower on a private device (AGENT_PRIVATE)', () => {
  let follower: PlanFollower | undefined;
  afterEach(() => follower?.stop());

  it('runs everything on the device until a plan comes, and refuses plans that send the first or last stage to the server', async () => {
    const p = await stubPlanner('127.0.0.1:0', () => [plan(10, 'SSC')]);
    try {
      follower = makeFollower(`127.0.0.1:${p.port}`, { private: true });
      expect(follower.choose(4)).toMatchObject({ placement: 'CCC', epoch: 0 });
      follower.start();
      await eventually(() => follower!.connected, { what: 'the plan stream' });
      p.push(plan(11, 'CSS'));
      p.push(plan(12, 'CSC'));
      await eventually(() => follower!.current()?.epoch === 12, { what: 'the plan that keeps both ends' });
      // 10 (stage 0 on the server) and 11 (the head on the server) were refused.
      expect(follower.choose(4)).toMatchObject({ placement: 'CSC', epoch: 12 });
    } finally {
      p.stop();
    }
  });

  it('names the stage and the rule', () => {
    expect(privacyProblem('SCC', true)).toBe('puts stage 0 (token ids in) on the server, which AGENT_PRIVATE forbids');
    expect(privacyProblem('CCS', true)).toBe('puts stage 2 (tokens out) on the server, which AGENT_PRIVATE forbids');
    expect(privacyProblem('CSC', true)).toBeUndefined();
    expect(privacyProblem('SSS', false)).toBeUndefined();
  });
});

describe('PlanFollower: why no plan is followed', () => {
  let follower: PlanFollower | undefined;
  const stubs: { stop: () => void }[] = [];
  afterEach(() => {
    follower?.stop();
    for (const s of stubs.splice(0)) s.stop();
  });
  const follow = (plannerAddr: string | undefined, maxMessageBytes = 1 << 20): PlanFollower =>
    makeFollower(plannerAddr, { maxMessageBytes, canRun: (s) => s < 2 });

  it('says that no planner is configured', () => {
    follower = follow(undefined);
    follower.start();
    expect(follower.noPlanReason()).toBe("no planner configured (PLANNER_ADDR is 'off'): every generation runs all-server");
  });

  it("names an unreachable planner, then the planner's own reason, then nothing once a plan is followed", async () => {
    const port = await freePort();
    follower = follow(`127.0.0.1:${port}`);
    follower.start();
    expect(follower.noPlanReason()).toBe(`not connected to the planner at 127.0.0.1:${port} yet`);
    await eventually(() => follower!.noPlanReason().startsWith(`not connected to the planner at 127.0.0.1:${port}: `), { what: 'the connection error' });
    const stub = await stubPlanner(`127.0.0.1:${port}`, () => [], 'no executor has reported its load yet');
    stubs.push(stub);
    await eventually(() => follower!.connected, { timeoutMs: 10_000, what: 'the plan stream' });
    expect(follower.noPlanReason()).toBe('the planner has no plan for this client yet: no executor has reported its load yet');
    stub.push(plan(5, 'CSS'));
    await eventually(() => follower!.current()?.epoch === 5, { what: 'the plan' });
    expect(follower.noPlanReason()).toBe('');
  });

  it('says that the planner sent a plan this device cannot follow', async () => {
    const stub = await stubPlanner('127.0.0.1:0', () => [plan(7, 'CCC')]);
    stubs.push(stub);
    follower = follow(`127.0.0.1:${stub.port}`);
    follower.start();
    await eventually(() => follower!.noPlanReason().startsWith("refused the planner's plan (epoch 7)"), { what: 'the refusal' });
    expect(follower.noPlanReason()).toContain('classes[0].placement puts stage 2 on this client');
    expect(follower.current()).toBeUndefined();
  });

  it('takes no plan over its message size limit (AGENT_MAX_MESSAGE_BYTES, as on every connection of the agent)', async () => {
    const big = plan(9, 'CSS');
    const stub = await stubPlanner('127.0.0.1:0', () => [{ ...big, classes: [{ ...big.classes[0], name: 'n'.repeat(2000) }] }]);
    stubs.push(stub);
    follower = follow(`127.0.0.1:${stub.port}`, 1024);
    follower.start();
    await eventually(() => /larger than max/.test(follower!.noPlanReason()), { what: 'the size refusal' });
    expect(follower.current()).toBeUndefined();
    expect(follower.noPlanReason()).toContain(`not connected to the planner at 127.0.0.1:${stub.port}`);
  });
});

describe('PlanFollower: phased plans (a decode placement)', () => {
  const phased = (epoch: number, placement: string, decodePlacement: string | undefined): ClientPlan => {
    const p = plan(epoch, placement);
    return { ...p, classes: [{ ...p.classes[0], decodePlacement, predictedHandoverMs: 3 }] };
  };
  const follower = (opts: { private?: boolean; canRun?: (s: number) => boolean } = {}): PlanFollower =>
    makeFollower(undefined, { stageCount: 4, canRun: opts.canRun ?? (() => true), private: opts.private });

  it('checks the decode placement by the rules of the placement, naming the field', () => {
    const f = follower({ canRun: (s) => s !== 2 });
    expect(f.problem(phased(1, 'CSSC', 'CCCC'))).toBe('classes[0].decodePlacement puts stage 2 on this client, which does not hold it');
    expect(f.problem(phased(1, 'CSSC', 'CSS'))).toBe("classes[0].decodePlacement must be 4 letters C or S, given 'CSS'");
    expect(f.problem(phased(1, 'CSSC', 'CSxC'))).toBe("classes[0].decodePlacement must be 4 letters C or S, given 'CSxC'");
    expect(f.problem(phased(1, 'CSSC', 'SSSS'))).toBeUndefined();
    expect(f.problem(phased(1, 'CSSC', ''))).toBeUndefined(); // empty: no phased plan
    expect(f.problem(phased(1, 'CSSC', undefined))).toBeUndefined();
    const p = follower({ private: true });
    expect(p.problem(phased(1, 'CSSC', 'CSSS'))).toBe('classes[0].decodePlacement puts stage 3 (tokens out) on the server, which AGENT_PRIVATE forbids');
    expect(p.problem(phased(1, 'CSSC', 'SSSC'))).toBe('classes[0].decodePlacement puts stage 0 (token ids in) on the server, which AGENT_PRIVATE forbids');
    expect(p.problem(phased(1, 'CSSC', 'CCSC'))).toBeUndefined();
  });

  it('hands a generation the decode placement only when it differs from the placement', async () => {
    const stub = await stubPlanner('127.0.0.1:0', () => [phased(20, 'CSSC', 'CCCC')]);
    const logs = capturingLogger('warn');
    const f = makeFollower(`127.0.0.1:${stub.port}`, { stageCount: 4 }, logs.log);
    try {
      f.start();
      await eventually(() => f.current()?.epoch === 20, { what: 'the phased plan' });
      expect(f.choose(4)).toEqual({ placement: 'CSSC', decodePlacement: 'CCCC', epoch: 20, requestClass: 'short', slaMs: 100 });
      stub.push(phased(21, 'CSSC', 'CSSC'));
      await eventually(() => f.current()?.epoch === 21, { what: 'the plan whose phases agree' });
      expect(f.choose(4)).toEqual({ placement: 'CSSC', epoch: 21, requestClass: 'short', slaMs: 100 });
      stub.push(phased(22, 'CSSC', 'CSSS')); // stage 3 is the head: fine on a device that is not private
      await eventually(() => f.current()?.epoch === 22, { what: 'the next phased plan' });
      stub.push(phased(23, 'CSSC', 'CSC')); // refused: the previous plan stays
      await eventually(() => logs.lines().some((l) => l.msg === 'refused a plan' && l.epoch === 23), { what: 'the refusal' });
      expect(logs.lines().find((l) => l.epoch === 23)?.problem).toBe("classes[0].decodePlacement must be 4 letters C or S, given 'CSC'");
      expect(f.choose(4)).toMatchObject({ decodePlacement: 'CSSS', epoch: 22 });
    } finally {
      f.stop();
      stub.stop();
    }
  });
});

describe('PlanFollower: the executors a plan names', () => {
  const withExecutors = (
    epoch: number,
    executor: { id: string; address: string } | undefined,
    alternates: { id: string; address: string }[] = [],
  ): ClientPlan => ({
    ...plan(epoch, 'CSS'),
    executor,
    alternates,
  });

  it('refuses a bad id, a bad address or too many alternates, naming the field, the rule and the value', () => {
    expect(executorsProblem(withExecutors(1, { id: 'exec-a', address: '10.0.0.2:50051' }, [{ id: 'exec-b', address: 'exec-b.svc:50051' }]))).toBeUndefined();
    expect(executorsProblem(withExecutors(1, undefined))).toBeUndefined();
    expect(executorsProblem(withExecutors(1, { id: 'exec-a', address: 'exec-a' }))).toBe("executor.address must be host:port (no port given), given 'exec-a'");
    expect(executorsProblem(withExecutors(1, { id: 'exec-a', address: '' }))).toBe("executor.address must be host:port, given an empty string, given ''");
    expect(executorsProblem(withExecutors(1, { id: 'a b', address: 'h:1' }))).toBe("executor.id must be 1..64 letters, digits, - or _, given 'a b'");
    expect(executorsProblem(withExecutors(1, undefined, [{ id: 'b', address: 'h:99999' }]))).toBe(
      "alternates[0].address must be host:port with a port in 1..65535, given 'h:99999'",
    );
    const long = `${'h'.repeat(5000)}:1`;
    expect(executorsProblem(withExecutors(1, { id: 'a', address: long }))).toMatch(
      /^executor\.address must be host:port of at most 260 characters, given 5002, given 'h+\.\.\. \(5002 chars\)'$/,
    );
    const many = Array.from({ length: MAX_ALTERNATES + 1 }, (_, i) => ({ id: `e${i}`, address: `h${i}:1` }));
    expect(executorsProblem(withExecutors(1, undefined, many))).toBe(`alternates must name at most ${MAX_ALTERNATES} executors, given ${MAX_ALTERNATES + 1}`);
  });

  it('refuses a plan naming a bad executor address, logs why, and keeps the previous plan and its executor', async () => {
    const stub = await stubPlanner('127.0.0.1:0', () => [withExecutors(30, { id: 'exec-a', address: '127.0.0.1:7001' })]);
    const logs = capturingLogger('warn');
    const f = makeFollower(`127.0.0.1:${stub.port}`, {}, logs.log);
    try {
      f.start();
      await eventually(() => f.current()?.epoch === 30, { what: 'the plan naming exec-a' });
      stub.push(withExecutors(31, { id: 'exec-b', address: 'exec-b:not-a-port' }));
      await eventually(() => logs.lines().some((l) => l.msg === 'refused a plan' && l.epoch === 31), { what: 'the refusal' });
      expect(logs.lines().find((l) => l.epoch === 31)?.problem).toBe("executor.address must be host:port with a port in 1..65535, given 'exec-b:not-a-port'");
      expect(f.current()?.executor).toEqual({ id: 'exec-a', address: '127.0.0.1:7001' });
      expect(f.noPlanReason()).toBe(''); // a plan is still followed
    } finally {
      f.stop();
      stub.stop();
    }
  });
});
