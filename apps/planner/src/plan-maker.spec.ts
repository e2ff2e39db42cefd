import type { ClassPlacement, ClientProfile, ServerLoad } from '@tandem/protocol';
import {
  evaluateGeneration,
  evaluatePhased,
  phaseEntryWork,
  placementFromLetters as fromLetters,
  placementToLetters as toLetters,
  planKey,
  sloCheck,
  solveGenerationDp,
  type Location,
} from '@tandem/dp';
import { clientProfile, sameStageTimes, serverLoad } from '@tandem/testkit';
import { seededRandom } from '@tandem/util';
import { makerOptions, SIX_STAGES } from '../test/fixtures';
import { decodeMsOf, KV_CHUNK_BYTES, PlanMaker, type KindFactors, type PlanMakerOptions } from './plan-maker';

const CLASS = { name: 'short', maxPromptTokens: 16, expectedNewTokens: 8, slaMs: 1000 };

function options(over: Partial<PlanMakerOptions> = {}): PlanMakerOptions {
  return makerOptions({ stages: SIX_STAGES, classes: [CLASS], slaMargin: 1, ...over });
}

function client(msPerStage: number, over: Partial<ClientProfile> = {}): ClientProfile {
  return clientProfile({
    clientId: 'c1',
    unixMs: 0,
    stages: sameStageTimes(SIX_STAGES.length, msPerStage / 4, msPerStage),
    uplink: { latencyMs: 1, bytesPerMs: 10_000 },
    downlink: { latencyMs: 1, bytesPerMs: 10_000 },
    ...over,
  });
}

function server(msPerStage: number, utilisation = 0): ServerLoad {
  return serverLoad({ serverId: 's', utilisation, unixMs: 0, stages: sameStageTimes(SIX_STAGES.length, msPerStage / 4, msPerStage) });
}

describe('PlanMaker', () => {
  it('waits for the server to report before planning', () => {
    expect(new PlanMaker(options()).plan(client(1), undefined, undefined)).toBeUndefined();
  });

  it('puts everything on the client when the client is fast enough for the SLA', () => {
    const [p] = new PlanMaker(options()).plan(client(2), server(1), undefined)!;
    expect(p.placement).toBe('CCCCCC');
    expect(p.predictedServerWork).toBe(0);
    expect(p.feasible).toBe(true);
  });

  it('keeps work on the server when the SLA is too tight for the client', () => {
    // all-server takes 82 ms; each stage moved to the client adds 99 ms
    const [p] = new PlanMaker(options({ classes: [{ ...CLASS, slaMs: 150 }] })).plan(client(10), server(1), undefined)!;
    expect(p.placement).toBe('SSSSSS');
    expect(p.feasible).toBe(true);
    expect(p.predictedLatencyMs).toBeLessThanOrEqual(150);
    // with 100 ms more the embed stage fits on the client
    const [q] = new PlanMaker(options({ classes: [{ ...CLASS, slaMs: 250 }] })).plan(client(10), server(1), undefined)!;
    expect(q.placement).toBe('CSSSSS');
  });

  it("keeps a private device's embedding and head on it, and says when the SLA cannot be met so", () => {
    // The open device's plan for a tight SLA is all-server (above); a private one may not send its token ids.
    const maker = new PlanMaker(options({ classes: [{ ...CLASS, slaMs: 150 }] }));
    const [open] = maker.plan(client(10), server(1), undefined)!;
    expect(open.placement).toBe('SSSSSS');
    const [priv] = maker.plan(client(10, { private: true }), server(1), undefined)!;
    expect(priv.placement[0]).toBe('C');
    expect(priv.placement[5]).toBe('C');
    expect(priv.feasible).toBe(false);
    // With room for both ends on the device, the private plan meets the SLA and leaves the middle on the server.
    const [roomy] = new PlanMaker(options({ classes: [{ ...CLASS, slaMs: 450 }] })).plan(client(10, { private: true }), server(1), undefined)!;
    expect(roomy.placement).toMatch(/^C.*C$/);
    expect(roomy.placement).toContain('S');
    expect(roomy.feasible).toBe(true);
  });

  it('prices the streamed all-server plan by the whole-model figure and splits by the stages, so a split that saves less than fusing does is not chosen', () => {
    // SLA 250 ms: CSSSSS fits (see above). Stage by stage the server runs 6 × 10 ms per decode
    // step; the executor measures a whole-model step at 30 ms (one fused call).
    const maker = new PlanMaker(options({ classes: [{ ...CLASS, slaMs: 250 }] }));
    const [staged] = maker.plan(client(10), server(1), undefined)!;
    expect(staged.placement).toBe('CSSSSS'); // without the whole figure the split saves a stage
    const load = { ...server(1), wholeModel: { stage: 0, prefillMsPerToken: 0.125, decodeMs: 3, samples: 4 } };
    const [fused] = maker.plan(client(10), load, undefined)!;
    expect(fused.placement).toBe('SSSSSS');
    // The streamed plan's work: prompt 16 × 0.125 + 7 decode steps × 3 ms.
    expect(fused.predictedServerWork).toBeCloseTo(16 * 0.125 + 7 * 3, 10);
    // A split still pays its stages one by one: the split's work did not change.
    const inst = maker.instance(client(10), load, { ...CLASS, slaMs: 250 })!;
    const split = evaluateGeneration(
      inst,
      [...'CSSSSS'].map((c): Location => (c === 'C' ? 'client' : 'server')),
    );
    expect(split.serverWork).toBeCloseTo(staged.predictedServerWork, 10);
    expect(split.serverWork).toBeGreaterThan(fused.predictedServerWork);
  });

  it("prices a server prefill by the executor's fitted line when it reports one, and by the mean per token otherwise", () => {
    const long = { ...CLASS, maxPromptTokens: 256, slaMs: 5000 };
    const maker = new PlanMaker(options({ classes: [long] }));
    const mean = { stage: 0, prefillMsPerToken: 0.5, decodeMs: 5, samples: 9 };
    const plain = maker.instance(client(10), { ...server(1), wholeModel: mean }, long)!;
    expect(plain.serverWholeModel?.serverPrefillWork).toBeCloseTo(0.5 * 256, 10);
    // The line: 6 ms a call and 0.1 ms a token; the stages' lines likewise (the head runs one row, priced as a decode step).
    const lined = {
      ...server(1),
      stages: server(1).stages.map((st) => ({ ...st, prefillFixedMs: 2, prefillMsPerTokenFitted: 0.05 })),
      wholeModel: { ...mean, prefillFixedMs: 6, prefillMsPerTokenFitted: 0.1 },
    };
    const fitted = maker.instance(client(10), lined, long)!;
    expect(fitted.serverWholeModel?.serverPrefillWork).toBeCloseTo(6 + 0.1 * 256, 10);
    expect(fitted.stages[1].serverPrefillWork).toBeCloseTo(2 + 0.05 * 256, 10);
    expect(fitted.stages[5].serverPrefillWork).toBe(lined.stages[5].decodeMs);
    // So the streamed all-server plan's work is its prefill by the line plus each decode step.
    const allServer = evaluateGeneration(fitted, fromLetters('SSSSSS'));
    expect(allServer.serverWork).toBeCloseTo(6 + 0.1 * 256 + 7 * 5, 10);
  });

  it("prices a decode step by the executor's line over the context when it reports one: long prompts decode slower", () => {
    const short = { ...CLASS, name: 'short', maxPromptTokens: 16, slaMs: 5000 };
    const long = { ...CLASS, name: 'long', maxPromptTokens: 256, slaMs: 5000 };
    const maker = new PlanMaker(options({ classes: [short, long] }));
    const mean = { stage: 0, prefillMsPerToken: 0.5, decodeMs: 5, samples: 9 };
    const plain = { ...server(1), wholeModel: mean };
    // Without a line every class decodes at the mean step.
    expect(maker.instance(client(10), plain, long)!.serverWholeModel?.serverDecodeWork).toBe(5);
    const lined = {
      ...server(1),
      stages: server(1).stages.map((st) => ({ ...st, decodeFixedMs: 1, decodeMsPerContextToken: 0.01 })),
      wholeModel: { ...mean, decodeFixedMs: 4, decodeMsPerContextToken: 0.02 },
    };
    // CLASS expects 8 new tokens: 7 decode passes over n + 3 positions on average.
    const m = CLASS.expectedNewTokens - 1;
    for (const cls of [short, long]) {
      const context = cls.maxPromptTokens + (m - 1) / 2;
      const inst = maker.instance(client(10), lined, cls)!;
      expect(inst.serverWholeModel?.serverDecodeWork).toBeCloseTo(4 + 0.02 * context, 10);
      expect(inst.stages[1].serverDecodeWork).toBeCloseTo(1 + 0.01 * context, 10);
    }
    // So the long class's all-server TPOT is predicted higher than the short one's (a device too
    // slow for any stage keeps both on the server).
    const [s, l] = maker.plan(client(1000), lined, undefined)!;
    expect([s.placement, l.placement]).toEqual(['SSSSSS', 'SSSSSS']);
    expect(l.predictedTpotMs).toBeGreaterThan(s.predictedTpotMs + 0.02 * 200);
    // The plans carry the slope, so an agent predicts a shorter prompt's pass lower; none without a line.
    expect(l.predictedTpotMsPerPromptToken).toBeCloseTo(0.02, 10);
    expect(l.predictedTpotMs - (256 - 16) * l.predictedTpotMsPerPromptToken!).toBeCloseTo(s.predictedTpotMs, 6);
    expect(maker.plan(client(1000), plain, undefined)![1].predictedTpotMsPerPromptToken).toBeUndefined();
    expect(decodeMsOf(lined.wholeModel, 100)).toBeCloseTo(6, 12);
    expect(decodeMsOf(mean, 100)).toBe(5);
  });

  it('ignores a whole-model figure not yet measured (zeros)', () => {
    const maker = new PlanMaker(options({ classes: [{ ...CLASS, slaMs: 250 }] }));
    const load = { ...server(1), wholeModel: { stage: 0, prefillMsPerToken: 0, decodeMs: 0, samples: 0 } };
    expect(maker.instance(client(10), load, CLASS)!.serverWholeModel).toBeUndefined();
    expect(maker.plan(client(10), load, undefined)![0].placement).toBe('CSSSSS');
  });

  it('while the server is idle optimises latency, keeping work on a faster server', () => {
    const maker = new PlanMaker(options({ classes: [{ ...CLASS, slaMs: 2000 }] }));
    const [idle] = maker.plan(client(10), server(1, 0.05), undefined, 'latency')!;
    expect(idle.placement).toBe('SSSSSS');
    const [busy] = maker.plan(client(10), server(1, 0.05), undefined, 'work')!;
    expect(busy.placement).toBe('CCCCCC');
    expect(busy.predictedServerWork).toBeLessThan(idle.predictedServerWork);
  });

  it('applies the latency objective to its own solvers only: the baselines place by their rule at any load', () => {
    // The client is faster than the server: the latency objective would put everything on it.
    const cls = { ...CLASS, slaMs: 2000 };
    const [dpIdle] = new PlanMaker(options({ classes: [cls] })).plan(client(1), server(10, 0.05), undefined, 'latency')!;
    expect(dpIdle.placement).toBe('CCCCCC');
    const [serverOnly] = new PlanMaker(options({ classes: [cls], algorithm: 'server-only' })).plan(client(1), server(10, 0.05), undefined, 'latency')!;
    expect(serverOnly.placement).toBe('SSSSSS');
    const [clientOnlyIdle] = new PlanMaker(options({ classes: [cls], algorithm: 'client-only' })).plan(client(10), server(1, 0.05), undefined, 'latency')!;
    expect(clientOnlyIdle.placement).toBe('CCCCCC');
  });

  it('moves work to the client as the loaded server becomes slower than the client', () => {
    // client stage 110 ms, server stage 66 ms unloaded: all-client (660 ms) misses the 600 ms SLA
    const maker = new PlanMaker(options({ classes: [{ ...CLASS, slaMs: 600 }] }));
    const work = (u: number): number => maker.plan(client(10), server(6, u), undefined)![0].predictedServerWork;
    const idle = work(0);
    const loaded = work(0.6); // server stages now take 165 ms: every stage on the server costs latency
    expect(idle).toBeGreaterThan(0);
    expect(loaded).toBeLessThan(idle);
  });

  it("prices server latency with the executor's measured stretch instead of the M/M/1 inflation", () => {
    const maker = new PlanMaker(options({ classes: [{ ...CLASS, slaMs: 600 }] }));
    const cls = maker.opts.classes[0]; // 16-token prompts
    const base = maker.instance(client(10), server(6, 0.5), cls)!;
    // utilisation 0.5 alone: x2
    expect(base.stages[1].serverDecodeMs).toBeCloseTo(12, 10);
    const load = (over: Partial<ServerLoad>): ServerLoad => ({
      ...server(6, 0.5),
      decodeStretch: 3,
      promptStretch: 1.25,
      longPromptStretch: 5,
      longStepTokens: 8,
      ...over,
    });
    const stretched = maker.instance(client(10), load({}), cls)!;
    expect(stretched.stages[1].serverDecodeMs).toBeCloseTo(18, 10);
    expect(stretched.stages[1].serverPrefillMs).toBeCloseTo(5 * 1.5 * 16, 10); // 16 > 8 positions: a long prompt
    expect(maker.instance(client(10), load({ longStepTokens: 64 }), cls)!.stages[1].serverPrefillMs).toBeCloseTo(1.25 * 1.5 * 16, 10); // a short one
    expect(stretched.stages[1].serverDecodeWork).toBe(6); // work is not stretched
    // the no-load alternative has no slow-down, and a stretch is capped like the inflation (0.9: x10)
    expect(maker.instance(client(10), load({}), cls, 0)!.stages[1].serverDecodeMs).toBe(6);
    expect(maker.instance(client(10), load({ decodeStretch: 50 }), cls)!.stages[1].serverDecodeMs).toBeCloseTo(60, 10);
    // A split's server stages by the split kind's stretch when the executor reports it; the all-server step by decode_stretch.
    const split = maker.instance(client(10), load({ splitDecodeStretch: 4, wholeModel: { stage: 0, prefillMsPerToken: 1, decodeMs: 20, samples: 5 } }), cls)!;
    expect(split.stages[1].serverDecodeMs).toBeCloseTo(24, 10);
    expect(split.stages[1].serverDecodeWork).toBe(6);
    expect(split.serverWholeModel!.serverDecodeMs).toBeCloseTo(60, 10);
    // Queue waits: every entry waits mean_queue_ms from an executor that reports nothing more; with
    // waits per kind, a prompt's entries its length's kind's, a split's decode entries the split
    // steps', a server-decoded token the all-server decode steps'; none at no load.
    expect(maker.instance(client(10), load({ meanQueueMs: 2 }), cls)).toMatchObject({ serverQueueMs: 2 });
    expect(maker.instance(client(10), load({ meanQueueMs: 2 }), cls)).not.toHaveProperty('serverDecodeQueueMs');
    const waits = { decodeMs: 0.5, promptMs: 6, longPromptMs: 20, splitDecodeMs: 4 };
    const kinds = maker.instance(client(10), load({ meanQueueMs: 2, queueWaits: waits }), cls)!;
    expect(kinds).toMatchObject({ serverQueueMs: 20, serverDecodeQueueMs: 4, serverStreamedQueueMs: 0.5 }); // 16 > 8 positions: a long prompt
    expect(maker.instance(client(10), load({ longStepTokens: 64, queueWaits: waits }), cls)).toMatchObject({ serverQueueMs: 6 });
    const idle = maker.instance(client(10), load({ meanQueueMs: 2, queueWaits: waits }), cls, 0)!;
    expect([idle.serverQueueMs, idle.serverDecodeQueueMs, idle.serverStreamedQueueMs]).toEqual([undefined, undefined, undefined]);
    // The client's step overhead is paid at every entry, as the uplink's latency is.
    expect(maker.instance(client(10), load({}), cls)!.uplink.latencyMs).toBe(1);
    expect(maker.instance(client(10, { stepOverheadMs: 2.5 }), load({}), cls)!.uplink).toEqual({ latencyMs: 3.5, bytesPerMs: 10_000 });
    expect(maker.instance(client(10, { uplink: undefined, stepOverheadMs: 2.5 }), load({}), cls)!.uplink.latencyMs).toBe(2.5);
    // PLANNER_SERVER_LATENCY=mm1 ignores the stretch: 1 / (1 - 0.5)
    const mm1 = new PlanMaker({ ...maker.opts, serverLatency: 'mm1' });
    expect(mm1.instance(client(10), load({}), cls)!.stages[1].serverDecodeMs).toBeCloseTo(12, 10);
    // a stretched server pushes work to the client, as load does
    const work = (l: ServerLoad): number => maker.plan(client(10), l, undefined)![0].predictedServerWork;
    expect(work({ ...server(6, 0), decodeStretch: 2.5, promptStretch: 2.5, longPromptStretch: 2.5, longStepTokens: 8 })).toBeLessThan(work(server(6, 0)));
  });

  it('when the loaded server makes every placement miss, relieves it with the no-load plan rather than sending it everything', () => {
    // client stage 330 ms, server 66 ms idle; at 70 % utilisation the server takes 220 ms per stage
    const maker = new PlanMaker(options({ classes: [{ ...CLASS, slaMs: 1000 }] }));
    const [idle] = maker.plan(client(30), server(6, 0), undefined)!;
    expect(idle.feasible).toBe(true);
    expect(idle.placement).toContain('C');
    const [loaded] = maker.plan(client(30), server(6, 0.7), undefined)!;
    expect(loaded.feasible).toBe(false);
    expect(loaded.placement).toBe(idle.placement); // not the all-server fastest placement
    expect(loaded.predictedServerWork).toBeLessThan(6 * 66);
    expect(loaded.predictedLatencyMs).toBeGreaterThan(1000); // reported at the loaded prices
  });

  it('does not flap: keeps the current placement unless the new one saves more than the hysteresis', () => {
    const cls = { ...CLASS, slaMs: 110 };
    const maker = new PlanMaker(options({ classes: [cls], hysteresis: 0 }));
    const inst = maker.instance(client(2), server(1), cls)!;
    const [opt] = maker.plan(client(2), server(1), undefined)!;
    // the feasible placement with the next-lowest server work after the optimum
    let runnerUp: { placement: string; work: number } | undefined;
    for (let mask = 0; mask < 64; mask++) {
      const placement = Array.from({ length: 6 }, (_, i) => ((mask >> i) & 1 ? 'C' : 'S')).join('');
      const cost = evaluateGeneration(
        inst,
        [...placement].map((c): Location => (c === 'C' ? 'client' : 'server')),
      );
      if (!sloCheck(inst.slo, cost).feasible || cost.serverWork <= opt.predictedServerWork + 1e-9) continue;
      if (!runnerUp || cost.serverWork < runnerUp.work) runnerUp = { placement, work: cost.serverWork };
    }
    expect(opt.predictedServerWork).toBeGreaterThan(0);
    const saving = (runnerUp!.work - opt.predictedServerWork) / runnerUp!.work;
    const prev = [{ ...opt, placement: runnerUp!.placement }];
    const kept = new PlanMaker(options({ classes: [cls], hysteresis: saving * 1.1 })).plan(client(2), server(1), prev)!;
    expect(kept[0].placement).toBe(runnerUp!.placement);
    const moved = new PlanMaker(options({ classes: [cls], hysteresis: saving * 0.9 })).plan(client(2), server(1), prev)!;
    expect(moved[0].placement).toBe(opt.placement);
  });

  it('keeps a plan in force that meets its SLOs exactly when the optimum saves no more than the hysteresis, over random clients, loads and plans in force', () => {
    const rnd = seededRandom(7);
    const hysteresis = 0.3; // wide: moving one of six like stages saves about a sixth
    const classes = [
      { name: 'a', maxPromptTokens: 16, expectedNewTokens: 8, ttftMs: 120, tpotMs: 30 },
      { name: 'b', maxPromptTokens: 64, expectedNewTokens: 16, slaMs: 600 },
    ];
    const maker = new PlanMaker(options({ classes, hysteresis, entryMargin: 0 }));
    const seen = { kept: 0, moved: 0, same: 0 };
    for (let k = 0; k < 300; k++) {
      const c = client(1 + rnd() * 20, { uplink: { latencyMs: rnd() * 10, bytesPerMs: 1000 + rnd() * 20_000 } });
      const s = server(1, rnd() * 0.8);
      // In force: what was planned at another load (close to the optimum), or any placement.
      const before = maker.plan(c, server(1, rnd() * 0.8), undefined)!;
      const previous = classes.map((cls, i) => ({
        name: cls.name,
        placement: k % 2 === 0 ? before[i].placement : Array.from({ length: 6 }, () => (rnd() < 0.5 ? 'C' : 'S')).join(''),
      }));
      const plans = maker.plan(c, s, previous as ClassPlacement[])!;
      classes.forEach((cls, i) => {
        const inst = maker.instance(c, s, cls)!;
        const inForce = evaluateGeneration(inst, fromLetters(previous[i].placement));
        if (!sloCheck(inst.slo, inForce).feasible) return; // the rules for a plan in force that misses are tested above and below
        const opt = solveGenerationDp(inst);
        const optLetters = toLetters(opt.placement);
        const want = opt.serverWork < (1 - hysteresis) * inForce.serverWork ? optLetters : previous[i].placement;
        expect({ k, cls: cls.name, placement: plans[i].placement }).toEqual({ k, cls: cls.name, placement: want });
        if (optLetters === previous[i].placement) seen.same++;
        else if (want === optLetters) seen.moved++;
        else seen.kept++;
      });
    }
    // Both outcomes, many times each.
    expect(seen.kept).toBeGreaterThan(20);
    expect(seen.moved).toBeGreaterThan(20);
  });

  it('enters a plan only with the entry margin of its SLOs to spare, and keeps the plan in force while it meets them', () => {
    const cls = { ...CLASS, slaMs: 110 };
    const maker = new PlanMaker(options({ classes: [cls], hysteresis: 0 }));
    const inst = maker.instance(client(2), server(1), cls)!;
    const [opt] = maker.plan(client(2), server(1), undefined)!;
    const bound = inst.slo.e2eMs!;
    // A margin the optimum lacks: it ends within it of the SLO.
    const margin = (1 - opt.predictedLatencyMs / bound) * 1.5;
    expect(margin).toBeGreaterThan(0);
    // The least-work placement with that margin to spare, by brute force over all 64.
    let roomy: { placement: string; work: number } | undefined;
    for (let mask = 0; mask < 64; mask++) {
      const placement = Array.from({ length: 6 }, (_, i) => ((mask >> i) & 1 ? 'C' : 'S')).join('');
      const cost = evaluateGeneration(inst, fromLetters(placement));
      if (cost.e2eMs > bound * (1 - margin)) continue;
      if (!roomy || cost.serverWork < roomy.work) roomy = { placement, work: cost.serverWork };
    }
    expect(roomy!.placement).not.toBe(opt.placement);
    const withMargin = new PlanMaker(options({ classes: [cls], hysteresis: 0, entryMargin: margin }));
    const [entered] = withMargin.plan(client(2), server(1), undefined)!;
    expect(entered.placement).toBe(roomy!.placement);
    expect(entered.predictedServerWork).toBeCloseTo(roomy!.work, 9);
    // In force already, the optimum stays: it still meets the SLO.
    const [kept] = withMargin.plan(client(2), server(1), [opt])!;
    expect(kept.placement).toBe(opt.placement);
    // A margin nothing meets (99 % of the SLO to spare): the optimum as it is.
    const [none] = new PlanMaker(options({ classes: [cls], hysteresis: 0, entryMargin: 0.99 })).plan(client(2), server(1), undefined)!;
    expect([none.placement, none.feasible]).toEqual([opt.placement, true]);
  });

  it('enters an all-device plan without the entry margin (the load does not move its figures), a plan using the server only with it', () => {
    const probe = new PlanMaker(options({ classes: [CLASS], hysteresis: 0 }));
    const inst = probe.instance(client(2), server(1), CLASS)!;
    const device = evaluateGeneration(inst, fromLetters('CCCCCC'));
    // The class's SLA puts the all-device plan at 98 % of the planned bound (SLA × margin).
    const cls = { ...CLASS, slaMs: (device.e2eMs / 0.98 / inst.slo.e2eMs!) * CLASS.slaMs! };
    const maker = new PlanMaker(options({ classes: [cls], hysteresis: 0, entryMargin: 0.05 }));
    const [entered] = maker.plan(client(2), server(1), undefined)!;
    expect([entered.placement, entered.feasible, entered.predictedServerWork]).toEqual(['CCCCCC', true, 0]);
    // The same bound with a device that cannot run the last stage: the plans left use the
    // server, and the one entered has the margin to spare.
    const [roomy] = maker.plan(client(2, { stages: client(2).stages.slice(0, 5) }), server(1), undefined)!;
    expect(roomy.placement).not.toBe('CCCCCC');
    expect(roomy.predictedLatencyMs).toBeLessThanOrEqual(0.95 * cls.slaMs * maker.opts.slaMargin + 1e-9);
  });

  it("keeps a plan that misses only at the server's load rather than take a faster one that misses too; moves one that misses on an idle server", () => {
    // On an idle server a plan that uses it meets 150 ms; the device alone does not (about 200).
    const maker = new PlanMaker(options({ hysteresis: 0.05, classes: [{ ...CLASS, slaMs: 150 }] }));
    const [idle] = maker.plan(client(3), server(1), undefined)!;
    expect(idle.feasible).toBe(true);
    expect(idle.placement).toContain('S');
    // At 75 % utilisation nothing meets it; the fastest plan moves stages to the device.
    const busy = server(1, 0.75);
    const [fresh] = maker.plan(client(3), busy, undefined)!;
    expect(fresh.feasible).toBe(false);
    expect(fresh.placement).not.toBe(idle.placement);
    // In force, the idle server's plan stays: it misses only because of the load.
    const [kept] = maker.plan(client(3), busy, [idle])!;
    expect([kept.placement, kept.feasible]).toEqual([idle.placement, false]);
    expect(kept.predictedLatencyMs).toBeGreaterThan(fresh.predictedLatencyMs);
    // A plan in force that misses on an idle server too (the device alone) gives way to the faster one.
    const [moved] = maker.plan(client(3), busy, [previousPlan('CCCCCC', { slaMs: 150 })])!;
    expect(moved.placement).toBe(fresh.placement);
  });

  it('replaces a placement that no longer meets the SLA even within the hysteresis', () => {
    const maker = new PlanMaker(options({ hysteresis: 0.99, classes: [{ ...CLASS, slaMs: 200 }] }));
    const prev = [previousPlan('CCCCCC', { slaMs: 200 })];
    const [p] = maker.plan(client(10), server(1), prev)!;
    expect(p.placement).not.toBe('CCCCCC');
    expect(p.feasible).toBe(true);
  });

  it('charges the server a hand-over cost per entry and pass, so a second visit to the server must pay for itself', () => {
    const cls = { ...CLASS, slaMs: 150 };
    const plainMaker = new PlanMaker(options({ classes: [cls] }));
    const pricedMaker = new PlanMaker(options({ classes: [cls], serverEntryMs: 0.5 }));
    const [plain] = plainMaker.plan(client(10), server(1), undefined)!;
    const [priced] = pricedMaker.plan(client(10), server(1), undefined)!;
    expect(plain.placement).toBe('SSSSSS');
    expect(priced.placement).toBe('SSSSSS');
    // All-server decodes on the server: one entry for the whole generation (before server-side
    // decoding was priced this was one entry per pass, 8 × 0.5).
    expect(priced.predictedServerWork).toBeCloseTo(plain.predictedServerWork + 0.5, 9);
    // A split enters once per pass (16-token prompt + 7 decode passes = 8), twice per pass when it visits twice.
    const work = (maker: PlanMaker, p: string): number =>
      evaluateGeneration(
        maker.instance(client(10), server(1), cls)!,
        [...p].map((c): Location => (c === 'C' ? 'client' : 'server')),
      ).serverWork;
    expect(work(pricedMaker, 'CSSSSS')).toBeCloseTo(work(plainMaker, 'CSSSSS') + 8 * 0.5, 9);
    expect(work(pricedMaker, 'SCSSSS')).toBeCloseTo(work(plainMaker, 'SCSSSS') + 2 * 8 * 0.5, 9);
  });

  it('never puts a stage the client did not measure on the client', () => {
    const c = client(0.1);
    const partial = { ...c, stages: c.stages.filter((s) => s.stage !== 3) };
    const [p] = new PlanMaker(options()).plan(partial, server(1), undefined)!;
    expect(p.placement[3]).toBe('S');
  });

  it('uses the SLA override of the client class', () => {
    const maker = new PlanMaker(options({ slaOverrides: { phone: { short: 123 } } }));
    expect(maker.plan(client(1, { clientClass: 'phone' }), server(1), undefined)![0].slaMs).toBe(123);
    expect(maker.plan(client(1), server(1), undefined)![0].slaMs).toBe(1000);
  });

  it('overrides per objective: a number replaces slaMs, an object the objectives it states', () => {
    const cls = { ...CLASS, ttftMs: 300, tpotMs: 50 };
    const maker = new PlanMaker(options({ classes: [cls], slaMargin: 0.5, slaOverrides: { phone: { short: 123 }, laptop: { short: { tpotMs: 20 } } } }));
    expect(maker.slosFor('phone', cls)).toEqual({ slaMs: 123, ttftMs: 300, tpotMs: 50 });
    expect(maker.slosFor('laptop', cls)).toEqual({ slaMs: 1000, ttftMs: 300, tpotMs: 20 });
    expect(maker.slosFor('default', { ...CLASS, slaMs: undefined, ttftMs: 10 })).toEqual({ ttftMs: 10 });
    // The margin applies to each SLO.
    expect(maker.instance(client(1, { clientClass: 'laptop' }), server(1), cls)!.slo).toEqual({ e2eMs: 500, ttftMs: 150, tpotMs: 10 });
    const [p] = maker.plan(client(1, { clientClass: 'laptop' }), server(1), undefined)!;
    expect([p.slaMs, p.ttftMs, p.tpotMs]).toEqual([1000, 300, 20]);
  });
});

/** A previous plan for the class `short` (as the planner would have sent it). */
function previousPlan(placement: string, slos: { slaMs?: number; ttftMs?: number; tpotMs?: number }): ClassPlacement {
  return {
    name: 'short',
    maxPromptTokens: 16,
    expectedNewTokens: 8,
    placement,
    slaMs: slos.slaMs ?? 0,
    ttftMs: slos.ttftMs ?? 0,
    tpotMs: slos.tpotMs ?? 0,
    predictedLatencyMs: 0,
    predictedServerWork: 0,
    predictedTtftMs: 0,
    predictedTpotMs: 0,
    predictedTtftMsPerPromptToken: 0,
    feasible: true,
  };
}

describe('PlanMaker with TTFT and TPOT SLOs', () => {
  // Client stages: 8 ms prefill (16 tokens), 2 ms per decode pass; server: 4 ms and 1 ms. Links 0.2 ms.
  const fastLinks = { uplink: { latencyMs: 0.2, bytesPerMs: 10_000 }, downlink: { latencyMs: 0.2, bytesPerMs: 10_000 } };
  const e2eOnly = { ...CLASS, slaMs: 1000 };
  const withTpot = { ...CLASS, slaMs: 1000, ttftMs: 100, tpotMs: 8 };

  it('gives a class with TTFT and TPOT SLOs a plan meeting both, where the E2E-only plan violates TPOT', () => {
    const [plain] = new PlanMaker(options({ classes: [e2eOnly] })).plan(client(2, fastLinks), server(1), undefined)!;
    expect(plain.placement).toBe('CCCCCC');
    expect(plain.predictedTpotMs).toBeCloseTo(12, 9); // 6 stages × 2 ms: over the 8 ms TPOT
    const maker = new PlanMaker(options({ classes: [withTpot] }));
    const [p] = maker.plan(client(2, fastLinks), server(1), undefined)!;
    expect(p.feasible).toBe(true);
    expect(p.placement).not.toBe(plain.placement);
    expect(p.predictedTpotMs).toBeLessThanOrEqual(8);
    expect(p.predictedTtftMs).toBeLessThanOrEqual(100);
    expect(p.predictedLatencyMs).toBeCloseTo(p.predictedTtftMs + 7 * p.predictedTpotMs, 9);
    expect([p.slaMs, p.ttftMs, p.tpotMs]).toEqual([1000, 100, 8]);
    // Five server stages are needed (each takes 1 ms off a 12 ms decode pass, the crossings add 0.4 ms);
    // a split does less work than all-server, so dp keeps one stage on the client.
    expect([...p.placement].filter((c) => c === 'S')).toHaveLength(5);
    // The figures are those of the instance the planner priced.
    const e = evaluateGeneration(
      maker.instance(client(2, fastLinks), server(1), withTpot)!,
      [...p.placement].map((c): Location => (c === 'C' ? 'client' : 'server')),
    );
    expect([p.predictedTtftMs, p.predictedTpotMs, p.predictedServerWork]).toEqual([e.ttftMs, e.tpotMs, e.serverWork]);
  });

  it('judges each kind of plan by its own learned factors: a split its outcomes say misses TPOT gives way to all-server', () => {
    const maker = new PlanMaker(options({ classes: [withTpot] }));
    const at = (kinds?: KindFactors) =>
      maker.plan(client(2, fastLinks), server(1), undefined, 'work', kinds && (() => ({ slaScale: 1, allServer: false, kinds })))![0];
    const plain = at();
    expect(plain.placement).toMatch(/C.*S|S.*C/); // the split of the test above, predicted within TPOT 8
    const fits = 8 / plain.predictedTpotMs; // the largest split factor it still meets TPOT 8 under
    expect(fits).toBeGreaterThan(1);
    // Splits measured 1.5 × their predicted TPOT: none fits 8 / 1.5; all-server (6 ms, no factor) does, all-device (12 ms) does not.
    const safer = at({ split: { ttft: 1, tpot: 1.5 } });
    expect(safer.placement).toBe('SSSSSS');
    expect(safer.feasible).toBe(true);
    expect(safer.predictedTpotMs).toBeCloseTo(6, 9); // the model's own prediction is published, not the corrected one
    // A factor the split still fits keeps it; one just over gives all-server (no split is faster).
    expect(at({ split: { ttft: 1, tpot: fits * 0.999 } }).placement).toBe(plain.placement);
    expect(at({ split: { ttft: 1, tpot: fits * 1.001 } }).placement).toBe('SSSSSS');
    // When every kind misses by its factors, the model's plan stays (nothing better is known).
    expect(at({ split: { ttft: 1, tpot: 1.5 }, server: { ttft: 1, tpot: 2 } }).placement).toBe(plain.placement);
    // The factors of the kinds the plan is not of do not move it.
    expect(at({ server: { ttft: 3, tpot: 3 }, device: { ttft: 3, tpot: 3 } }).placement).toBe(plain.placement);
    // A baseline places by its rule whatever was learned.
    const greedy = new PlanMaker(options({ classes: [withTpot], algorithm: 'greedy' }));
    const g = (kinds?: KindFactors) =>
      greedy.plan(client(2, fastLinks), server(1), undefined, 'work', kinds && (() => ({ slaScale: 1, allServer: false, kinds })))![0].placement;
    expect(g({ split: { ttft: 1, tpot: 1.5 } })).toBe(g());
  });

  it('prices all-server streamed (prompt up once, no per-step crossings) and picks it when no split meets the SLOs', () => {
    // 20 ms links: every split's decode pass pays at least 40 ms of links.
    const slow = { uplink: { latencyMs: 20, bytesPerMs: 10_000 }, downlink: { latencyMs: 20, bytesPerMs: 10_000 } };
    const cls = { ...CLASS, ttftMs: 200, tpotMs: 10 };
    const [p] = new PlanMaker(options({ classes: [cls], serverEntryMs: 0.5 })).plan(client(2, slow), server(1), undefined)!;
    expect(p.placement).toBe('SSSSSS');
    expect(p.feasible).toBe(true);
    expect(p.predictedTpotMs).toBeCloseTo(6, 9); // Σ server decode, no crossing
    // up(16 × 8 B) + 5 × 4 ms + the head's one sampled row (1 ms) + down(8 B)
    expect(p.predictedTtftMs).toBeCloseTo(20 + 128 / 10_000 + 21 + 20 + 8 / 10_000, 9);
    // work: 5 × 4 + 1 (prefill) + 6 × 7 × 1 (decode) + one entry
    expect(p.predictedServerWork).toBeCloseTo(63 + 0.5, 9);
    // Priced stepped (an executor without server-side decoding) nothing meets TPOT.
    const [stepped] = new PlanMaker(options({ classes: [cls], serverEntryMs: 0.5, serverDecoding: false })).plan(client(2, slow), server(1), undefined)!;
    expect(stepped.feasible).toBe(false);
    expect(stepped.predictedTpotMs).toBeGreaterThan(10);
  });

  it('keeps all-server when a split meets the SLOs but its hand-overs cost more than the stage it moves', () => {
    // The client can run only the embedding, which costs the server 0.16 + 7 × 0.1 = 0.86 ms of
    // work; a split enters the server once per pass (8 × 0.6 ms), all-server once (0.6 ms).
    const c = client(1);
    const onlyEmbed = { ...c, stages: c.stages.filter((st) => st.stage === 0) };
    const s = server(1);
    const cheapEmbed = { ...s, stages: s.stages.map((st) => (st.stage === 0 ? { ...st, prefillMsPerToken: 0.01, decodeMs: 0.1 } : st)) };
    const cls = { ...CLASS, slaMs: 1000, ttftMs: 500, tpotMs: 100 };
    const [p] = new PlanMaker(options({ classes: [cls], serverEntryMs: 0.6 })).plan(onlyEmbed, cheapEmbed, undefined)!;
    expect(p.placement).toBe('SSSSSS');
    expect(p.feasible).toBe(true);
    // CSSSSS meets the SLOs too, at more work.
    const maker = new PlanMaker(options({ classes: [cls], serverEntryMs: 0.6 }));
    const split = evaluateGeneration(
      maker.instance(onlyEmbed, cheapEmbed, cls)!,
      [...'CSSSSS'].map((x): Location => (x === 'C' ? 'client' : 'server')),
    );
    expect(sloCheck(maker.instance(onlyEmbed, cheapEmbed, cls)!.slo, split).feasible).toBe(true);
    expect(split.serverWork).toBeGreaterThan(p.predictedServerWork);
    // Priced stepped, as before server-side decoding, all-server paid an entry per pass and the split won.
    const [stepped] = new PlanMaker(options({ classes: [cls], serverEntryMs: 0.6, serverDecoding: false })).plan(onlyEmbed, cheapEmbed, undefined)!;
    expect(stepped.placement).toBe('CSSSSS');
  });

  it("prices the server's queue wait at every entry and every server-decoded token", () => {
    const cls = { ...CLASS, slaMs: 1000, tpotMs: 11 };
    const maker = new PlanMaker(options({ classes: [cls] }));
    // 2 ms a stage on the device (12 ms a token alone): a split leaving two stages on the server fits TPOT.
    const c = client(2, fastLinks);
    const idle = maker.plan(c, server(1), undefined)![0];
    expect(idle.placement).toMatch(/^C+S+$/);
    const queued = { ...server(1), meanQueueMs: 4 };
    const inst = maker.instance(c, queued, cls)!;
    expect(inst.serverQueueMs).toBe(4);
    const letters = (p: string): Location[] => [...p].map((x): Location => (x === 'C' ? 'client' : 'server'));
    const split = evaluateGeneration(inst, letters(idle.placement));
    const splitIdle = evaluateGeneration(maker.instance(c, server(1), cls)!, letters(idle.placement));
    expect(split.tpotMs - splitIdle.tpotMs).toBeCloseTo(4, 9);
    expect(evaluateGeneration(inst, letters('SSSSSS')).tpotMs).toBeCloseTo(6 + 4, 9);
    // Waiting 4 ms at every entry, the split misses TPOT; all-server (one wait per token) meets it.
    const busy = maker.plan(c, queued, undefined)![0];
    expect(busy.placement).toBe('SSSSSS');
    expect(busy.feasible).toBe(true);
  });

  it('gives the TTFT slope per prompt token, so a shorter prompt of the class is predicted by its own length', () => {
    const cls = { ...CLASS, slaMs: 1000 };
    const maker = new PlanMaker(options({ classes: [cls] }));
    for (const c of [client(2), client(10)]) {
      const [p] = maker.plan(c, server(1), undefined)!;
      // The same placement priced for a 5-token prompt of the class.
      const short = evaluateGeneration(
        maker.instance(c, server(1), { ...cls, maxPromptTokens: 5 })!,
        [...p.placement].map((x): Location => (x === 'C' ? 'client' : 'server')),
      );
      expect(p.predictedTtftMsPerPromptToken).toBeGreaterThan(0);
      expect(p.predictedTtftMs - (16 - 5) * p.predictedTtftMsPerPromptToken).toBeCloseTo(short.ttftMs, 9);
    }
  });

  it("prices hand-overs with the executor's fitted overhead once it rests on enough traffic, else PLANNER_SERVER_ENTRY_MS", () => {
    const cls = { ...CLASS, slaMs: 1000 };
    const maker = new PlanMaker(options({ classes: [cls], serverEntryMs: 0.6 }));
    const fitted = { msPerMessageIn: 0.4, msPerMessageOut: 0.2, msPerKibIn: 0.01, msPerKibOut: 0.02, idleMsPerS: 3, samples: 10 };
    // n = 16, m = 7: (16 + 7) / 8 tokens of 256 B each way per pass
    expect(maker.entryWork({ ...server(1), overhead: fitted }, 16, 7)).toBeCloseTo(0.6 + (23 / 8) * 0.25 * 0.03, 12);
    expect(maker.entryWork({ ...server(1), overhead: { ...fitted, samples: 9 } }, 16, 7)).toBe(0.6);
    expect(maker.entryWork(server(1), 16, 7)).toBe(0.6);
    // and the instance carries it
    expect(maker.instance(client(2), { ...server(1), overhead: { ...fitted, msPerMessageIn: 2 } }, cls)!.serverEntryWork).toBeCloseTo(
      2.2 + (23 / 8) * 0.25 * 0.03,
      12,
    );
  });

  it('hysteresis: keeps a previous plan meeting every SLO within the margin, replaces one that misses TPOT', () => {
    const maker = new PlanMaker(options({ classes: [withTpot], hysteresis: 0.99 }));
    const [best] = maker.plan(client(2, fastLinks), server(1), undefined)!;
    // all-server meets both SLOs and does more work, but within a 99 % hysteresis: kept.
    const [kept] = maker.plan(client(2, fastLinks), server(1), [previousPlan('SSSSSS', withTpot)])!;
    expect(kept.placement).toBe('SSSSSS');
    expect(kept.feasible).toBe(true);
    expect(kept.predictedServerWork).toBeGreaterThan(best.predictedServerWork);
    // all-client misses TPOT: replaced whatever the hysteresis.
    const [moved] = maker.plan(client(2, fastLinks), server(1), [previousPlan('CCCCCC', withTpot)])!;
    expect(moved.placement).toBe(best.placement);
    expect(moved.feasible).toBe(true);
  });
});

describe('PlanMaker with dp-phased', () => {
  // KV bytes per token of the attention stages (256-byte hidden state: key and value, float32).
  const KV_STAGES = SIX_STAGES.map((s) => ({ ...s, kvBytesPerToken: s.name.endsWith('.attn') ? 512 : 0 }));
  // A long prompt the device prefills slowly (2.5 ms per token per stage: 160 ms per stage) within a
  // TTFT of 200 ms, and a decode it runs at 60 ms per token within a TPOT of 100 ms.
  const LONG = { name: 'long', maxPromptTokens: 64, expectedNewTokens: 8, ttftMs: 200, tpotMs: 100 };
  const phasedOptions = (algorithm: PlanMakerOptions['algorithm']): PlanMakerOptions =>
    makerOptions({ stages: KV_STAGES, classes: [LONG], slaMargin: 1, algorithm, serverEntryMs: 0 });

  it('prefills on the server and decodes on the device when only the phases apart meet both SLOs with less server work', () => {
    const [dp] = new PlanMaker(phasedOptions('dp')).plan(client(10), server(1), undefined)!;
    // dp keeps one placement: no device stage before the head fits the TTFT, so the decode's
    // stages stay on the server too.
    expect(dp.placement.slice(0, 5)).toBe('SSSSS');
    expect(dp.decodePlacement).toBeUndefined();
    const maker = new PlanMaker(phasedOptions('dp-phased'));
    const [p] = maker.plan(client(10), server(1), undefined)!;
    expect(p.decodePlacement).toBe('CCCCCC');
    expect(p.placement.slice(0, 5)).toBe('SSSSS');
    expect(p.feasible).toBe(true);
    expect(p.predictedServerWork).toBeLessThan(dp.predictedServerWork);
    // The hand-over: both attention stages' prompt KV (2 × 64 × 512 bytes) down the 10 kB/ms link, 1 ms latency.
    expect(p.predictedHandoverMs).toBeCloseTo(1 + (2 * 64 * 512) / 10_000, 6);
    // The figures are libs/dp's for the pair, as a reader of docs/placement.md would compute them.
    const inst = maker.instance(client(10), server(1), LONG)!;
    const cost = evaluatePhased(inst, fromLetters(p.placement), fromLetters(p.decodePlacement!));
    expect(p.predictedTtftMs).toBe(cost.ttftMs);
    expect(p.predictedTpotMs).toBe(cost.tpotMs);
    expect(p.predictedLatencyMs).toBe(cost.e2eMs);
    expect(p.predictedServerWork).toBe(cost.serverWork);
    // The hand-over's slope per prompt token: a 20-token prompt of the class moves 20 tokens' cache.
    const short = evaluatePhased(
      maker.instance(client(10), server(1), { ...LONG, maxPromptTokens: 20 })!,
      fromLetters(p.placement),
      fromLetters(p.decodePlacement!),
    );
    expect(p.predictedHandoverMsPerPromptToken).toBeCloseTo((2 * 512) / 10_000, 9);
    expect(p.predictedHandoverMs! - (64 - 20) * p.predictedHandoverMsPerPromptToken!).toBeCloseTo(short.handoverMs, 9);
  });

  it('gives the same plan as dp, with no decode placement, when moving between the phases does not pay', () => {
    // The SLOs of the first describe block: a short prompt the device runs whole.
    const opts = { stages: KV_STAGES, classes: [CLASS], slaMargin: 1, serverEntryMs: 0 };
    for (const [c, s] of [
      [client(2), server(1)],
      [client(10), server(1)],
    ] as const) {
      const [dp] = new PlanMaker(makerOptions({ ...opts, algorithm: 'dp' })).plan(c, s, undefined)!;
      const [ph] = new PlanMaker(makerOptions({ ...opts, algorithm: 'dp-phased' })).plan(c, s, undefined)!;
      expect(ph.decodePlacement).toBeUndefined();
      expect(ph.placement).toBe(dp.placement);
      expect(ph.predictedServerWork).toBe(dp.predictedServerWork);
    }
  });

  it('keeps a phased plan in force while the new optimum saves no more than the hysteresis, and names plans by both placements', () => {
    const maker = new PlanMaker(phasedOptions('dp-phased'));
    const [p] = maker.plan(client(10), server(1), undefined)!;
    expect(planKey(p)).toBe(`${p.placement}/${p.decodePlacement}`);
    expect(planKey({ placement: 'SSSSSS', decodePlacement: 'SSSSSS' })).toBe('SSSSSS');
    // The device's decode slows by 1 %: the same pair is still best and is kept as it was.
    const [q] = maker.plan(client(10.1), server(1), [p])!;
    expect(planKey(q)).toBe(planKey(p));
    // A previous single-placement plan (all-server) is replaced: the phased pair saves far more than 5 %.
    const [r] = maker.plan(client(10), server(1), [{ ...p, placement: 'SSSSSS', decodePlacement: undefined }])!;
    expect(planKey(r)).toBe(planKey(p));
  });
});

describe('PlanMaker with dp-phased and a least saving', () => {
  const KV_STAGES = SIX_STAGES.map((s) => ({ ...s, kvBytesPerToken: s.name.endsWith('.attn') ? 512 : 0 }));
  const LONG = { name: 'long', maxPromptTokens: 64, expectedNewTokens: 8, ttftMs: 200, tpotMs: 100 };
  const maker = (phasedMinSaving: number): PlanMaker =>
    new PlanMaker(makerOptions({ stages: KV_STAGES, classes: [LONG], slaMargin: 1, algorithm: 'dp-phased', serverEntryMs: 0, phasedMinSaving }));

  it("takes a phased pair only when it saves at least that fraction of dp's single placement's work", () => {
    const [dp] = new PlanMaker(makerOptions({ stages: KV_STAGES, classes: [LONG], slaMargin: 1, algorithm: 'dp', serverEntryMs: 0 })).plan(
      client(10),
      server(1),
      undefined,
    )!;
    const [free] = maker(0).plan(client(10), server(1), undefined)!;
    expect(free.decodePlacement).toBe('CCCCCC');
    const saving = 1 - free.predictedServerWork / dp.predictedServerWork;
    expect(saving).toBeGreaterThan(0.05);
    // Asked for a little less than it saves: the pair stays.
    const [below] = maker(saving - 0.01).plan(client(10), server(1), undefined)!;
    expect(planKey(below)).toBe(planKey(free));
    // Asked for more: dp's single placement, with no decode placement.
    const [above] = maker(saving + 0.01).plan(client(10), server(1), undefined)!;
    expect(above.decodePlacement).toBeUndefined();
    expect(above.placement).toBe(dp.placement);
    expect(above.predictedServerWork).toBe(dp.predictedServerWork);
  });

  /** server(1) with an executor overhead fit resting on enough traffic, hand-over figures as given. */
  const fitted = (msPerKibIn: number, msPerKibOut: number, msPerMessage = 0): ServerLoad => ({
    ...server(1),
    overhead: { msPerMessageIn: msPerMessage, msPerMessageOut: msPerMessage, msPerKibIn, msPerKibOut, idleMsPerS: 0, samples: 10 },
  });

  it("prices the hand-over's server work from the executor's fitted overhead: a pair that saves less than it is not chosen", () => {
    const m = maker(0);
    let pairs = 0;
    let singles = 0;
    for (const kib of [0, 0.01, 0.05, 0.2, 1, 5]) {
      const load = fitted(kib, kib, 0.1);
      const inst = m.instance(client(10), load, LONG)!;
      expect(inst.kvHandover).toEqual({ msPerMessageIn: 0.1, msPerMessageOut: 0.1, msPerKibIn: kib, msPerKibOut: kib, chunkBytes: KV_CHUNK_BYTES });
      // The device-decode pair the first test finds, priced with its hand-over, against dp's single placement.
      const pair = evaluatePhased(inst, fromLetters('SSSSSC'), fromLetters('CCCCCC'));
      // Both attention stages' 32 KiB (512 B x 64 positions) go down: one kv_take in and one kv_chunk out each.
      expect(pair.handoverWork).toBeCloseTo(2 * (0.1 + 0.1 + 32 * kib), 9);
      const single = solveGenerationDp(inst);
      const [p] = m.plan(client(10), load, undefined)!;
      if (sloCheck(inst.slo, pair).feasible && pair.serverWork < single.serverWork) {
        pairs++;
        expect(p.decodePlacement).toBe('CCCCCC');
        expect(p.predictedServerWork).toBeLessThanOrEqual(pair.serverWork * (1 + 1e-9));
      } else {
        singles++;
        expect(p.decodePlacement).toBeUndefined();
        expect(p.predictedServerWork).toBeCloseTo(single.serverWork, 9);
      }
    }
    // The sweep crosses the point where the hand-over eats the saving.
    expect(pairs).toBeGreaterThan(0);
    expect(singles).toBeGreaterThan(0);
  });

  it("prices a KV cache's KiB by the executor's KV coefficients when it reports them", () => {
    const load = fitted(0.001, 0.002, 0.1);
    const withKv = { ...load, overhead: { ...load.overhead!, msPerKvKibIn: 0.02, msPerKvKibOut: 0.008 } };
    expect(maker(0).instance(client(10), withKv, LONG)!.kvHandover).toEqual({
      msPerMessageIn: 0.1,
      msPerMessageOut: 0.1,
      msPerKibIn: 0.02,
      msPerKibOut: 0.008,
      chunkBytes: KV_CHUNK_BYTES,
    });
    // Not before the fit rests on enough intervals, and never for an algorithm that does not hand over.
    expect(maker(0).instance(client(10), { ...withKv, overhead: { ...withKv.overhead, samples: 9 } }, LONG)!.kvHandover).toBeUndefined();
    const dp = new PlanMaker(makerOptions({ stages: KV_STAGES, classes: [LONG], slaMargin: 1, algorithm: 'dp', serverEntryMs: 0 }));
    expect(dp.instance(client(10), withKv, LONG)!.kvHandover).toBeUndefined();
  });

  it("prices a prefill's entry with the prompt's hidden states and a decode's with one token's, their mean the generation's entry", () => {
    const load = fitted(0.01, 0.02, 0.1);
    const inst = maker(0).instance(client(10), load, LONG)!;
    const n = inst.promptTokens;
    const hiddenKib = Math.max(...KV_STAGES.map((s) => s.inBytesPerToken)) / 1024;
    // 0.1 ms per message each way, 0.03 ms per KiB in and out.
    expect(inst.serverPrefillEntryWork).toBeCloseTo(0.2 + n * hiddenKib * 0.03, 9);
    expect(inst.serverPrefillEntryWork).toBeGreaterThan(2 * inst.serverEntryWork!);
    // The decode passes' entries take the rest of the mean: one token's hidden state each.
    expect(phaseEntryWork(inst).decode).toBeCloseTo(0.2 + hiddenKib * 0.03, 9);
    // Not before the fit rests on enough intervals (every entry is serverEntryMs then), and never for dp.
    expect(maker(0).instance(client(10), { ...load, overhead: { ...load.overhead!, samples: 9 } }, LONG)!.serverPrefillEntryWork).toBeUndefined();
    const dp = new PlanMaker(makerOptions({ stages: KV_STAGES, classes: [LONG], slaMargin: 1, algorithm: 'dp', serverEntryMs: 0 }));
    expect(dp.instance(client(10), load, LONG)!.serverPrefillEntryWork).toBeUndefined();
  });

  it('gives the answers it gave before the hand-over was priced when its coefficients are zero', () => {
    const before = new PlanMaker(makerOptions({ stages: KV_STAGES, classes: [LONG], slaMargin: 1, algorithm: 'dp-phased', serverEntryMs: 0 }));
    for (const c of [client(2), client(10), client(40)]) {
      const [a] = before.plan(c, server(1), undefined)!;
      const [b] = maker(0).plan(c, fitted(0, 0), undefined)!;
      expect(b).toEqual(a);
    }
  });
});
