import type { ClientProfile, ServerLoad } from '@tandem/protocol';
import { evaluatePlacement } from '@tandem/dp';
import { PlanMaker, type PlanMakerOptions } from './plan-maker';

const STAGES = ['embed', 'block.0.attn', 'block.0.mlp', 'block.1.attn', 'block.1.mlp', 'head'].map((name, i) => ({ name, inBytesPerToken: i === 0 ? 8 : 256 }));
const CLASS = { name: 'short', maxPromptTokens: 16, expectedNewTokens: 8, slaMs: 1000 };

function options(over: Partial<PlanMakerOptions> = {}): PlanMakerOptions {
  return { stages: STAGES, classes: [CLASS], slaOverrides: {}, algorithm: 'dp', hysteresis: 0.05, slaMargin: 1, resolutionMs: 0.5, maxUtilisation: 0.9, ...over };
}

function client(msPerStage: number, over: Partial<ClientProfile> = {}): ClientProfile {
  return {
    clientId: 'c1', clientClass: 'default', modelId: 'm', unixMs: 0, planEpoch: 0,
    stages: STAGES.map((_, stage) => ({ stage, prefillMsPerToken: msPerStage / 4, decodeMs: msPerStage, samples: 3 })),
    uplink: { latencyMs: 1, bytesPerMs: 10_000 }, downlink: { latencyMs: 1, bytesPerMs: 10_000 },
    ...over,
  };
}

function server(msPerStage: number, utilisation = 0): ServerLoad {
  return {
    serverId: 's', modelId: 'm', queueDepth: 0, activeSessions: 0, utilisation, unixMs: 0, meanQueueMs: 0, overhead: undefined,
    stages: STAGES.map((_, stage) => ({ stage, prefillMsPerToken: msPerStage / 4, decodeMs: msPerStage, samples: 3 })),
  };
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

  it('while the server is idle optimises latency, keeping work on a faster server', () => {
    const maker = new PlanMaker(options({ classes: [{ ...CLASS, slaMs: 2000 }] }));
    const [idle] = maker.plan(client(10), server(1, 0.05), undefined, 'latency')!;
    expect(idle.placement).toBe('SSSSSS');
    const [busy] = maker.plan(client(10), server(1, 0.05), undefined, 'work')!;
    expect(busy.placement).toBe('CCCCCC');
    expect(busy.predictedServerWork).toBeLessThan(idle.predictedServerWork);
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
      const cost = evaluatePlacement(inst, [...placement].map((c) => (c === 'C' ? 'client' : 'server')));
      if (cost.latencyMs > inst.slaMs || cost.serverWork <= opt.predictedServerWork + 1e-9) continue;
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

  it('replaces a placement that no longer meets the SLA even within the hysteresis', () => {
    const maker = new PlanMaker(options({ hysteresis: 0.99, classes: [{ ...CLASS, slaMs: 200 }] }));
    const prev = [{ name: 'short', maxPromptTokens: 16, expectedNewTokens: 8, placement: 'CCCCCC', slaMs: 200, predictedLatencyMs: 0, predictedServerWork: 0, feasible: true }];
    const [p] = maker.plan(client(10), server(1), prev)!;
    expect(p.placement).not.toBe('CCCCCC');
    expect(p.feasible).toBe(true);
  });

  it('charges the server a hand-over cost per entry and pass, so a second visit to the server must pay for itself', () => {
    const cls = { ...CLASS, slaMs: 150 };
    const [plain] = new PlanMaker(options({ classes: [cls] })).plan(client(10), server(1), undefined)!;
    const [priced] = new PlanMaker(options({ classes: [cls], serverEntryMs: 0.5 })).plan(client(10), server(1), undefined)!;
    expect(plain.placement).toBe('SSSSSS');
    expect(priced.placement).toBe('SSSSSS');
    // 16-token prompt + 7 decode steps = 8 passes, one entry each
    expect(priced.predictedServerWork).toBeCloseTo(plain.predictedServerWork + 8 * 0.5, 9);
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
});
