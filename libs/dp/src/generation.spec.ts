import {
  evaluateGeneration,
  evaluatePlacement,
  generationAsContractInstance,
  instanceFromMeasured,
  sloCheck,
  sloRatio,
  type GenerationInstance,
  type Location,
  type MeasuredProfile,
} from './index';
import { seededRandom } from './random-instances.fixture';

const close = (a: number, b: number): boolean => Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));

// Two stages with round numbers, so every figure is checkable by hand.
// n = 10 prompt tokens, m = 4 decode passes; links 5 ms + bytes / 100 B/ms up, 2 ms + bytes / 1000 down.
const inst: GenerationInstance = {
  stages: [
    { name: 'a', clientPrefillMs: 20, serverPrefillMs: 2, clientDecodeMs: 4, serverDecodeMs: 1, inBytesPerToken: 10 },
    { name: 'b', clientPrefillMs: 40, serverPrefillMs: 4, clientDecodeMs: 8, serverDecodeMs: 2, inBytesPerToken: 100, serverDecodeWork: 3 },
  ],
  promptTokens: 10,
  decodeSteps: 4,
  outBytesPerPass: 8,
  uplink: { latencyMs: 5, bytesPerMs: 100 },
  downlink: { latencyMs: 2, bytesPerMs: 1000 },
  slo: { e2eMs: 100 },
  serverEntryWork: 0.5,
};

describe('evaluateGeneration', () => {
  it.each<[string, Location[], boolean, { ttft: number; tpot: number; work: number; switches: number }]>([
    // all-client: no crossing; TTFT 20 + 40, TPOT 4 + 8.
    ['all-client', ['client', 'client'], true, { ttft: 60, tpot: 12, work: 0, switches: 0 }],
    // C S: TTFT 20 + up(1000 B) 5 + 10 + 4 + down(8 B) 2.008; TPOT 4 + up(100 B) 6 + 2 + 2.008;
    // work: prefill 4 + 4 · decode work 3, one entry per pass: 5 · 0.5.
    ['C S', ['client', 'server'], true, { ttft: 20 + 15 + 4 + 2.008, tpot: 4 + 6 + 2 + 2.008, work: 4 + 12 + 2.5, switches: 2 }],
    // S C: TTFT up(100 B) 6 + 2 + down(1000 B) 3 + 40; TPOT up(10 B) 5.1 + 1 + down(100 B) 2.1 + 8;
    // work: stage a's prefill 2 + 4 · 1 (no explicit work: its times), one entry per pass.
    ['S C', ['server', 'client'], true, { ttft: 6 + 2 + 3 + 40, tpot: 5.1 + 1 + 2.1 + 8, work: 2 + 4 * 1 + 2.5, switches: 2 }],
    // all-server stepped: every decode pass crosses up and down and enters the server.
    ['S S stepped', ['server', 'server'], false, { ttft: 6 + 2 + 4 + 2.008, tpot: 5.1 + 1 + 2 + 2.008, work: 6 + 4 + 12 + 2.5, switches: 2 }],
    // all-server with server-side decoding: prompt up once, decode passes back to back, one entry.
    ['S S streamed', ['server', 'server'], true, { ttft: 6 + 2 + 4 + 2.008, tpot: 1 + 2, work: 6 + 4 + 12 + 0.5, switches: 2 }],
  ])('prices %s exactly', (_, placement, serverDecoding, want) => {
    const got = evaluateGeneration({ ...inst, serverDecoding }, placement);
    expect(got.ttftMs).toBeCloseTo(want.ttft, 12);
    expect(got.tpotMs).toBeCloseTo(want.tpot, 12);
    expect(got.e2eMs).toBeCloseTo(want.ttft + 4 * want.tpot, 12);
    expect(got.serverWork).toBeCloseTo(want.work, 12);
    expect(got.switches).toBe(want.switches);
    expect(got.serverDecoding).toBe(serverDecoding && placement.every((p) => p === 'server'));
  });

  it("waits each pass's queue at each entry: the prefill's, a decode pass's, a server-decoded token's", () => {
    const q = { ...inst, serverQueueMs: 7, serverDecodeQueueMs: 3, serverStreamedQueueMs: 0.5 };
    // C S: one entry per pass, the prefill waits 7, each decode pass 3.
    const cs = evaluateGeneration(q, ['client', 'server']);
    expect(cs.ttftMs).toBeCloseTo(20 + 15 + 7 + 4 + 2.008, 12);
    expect(cs.tpotMs).toBeCloseTo(4 + 6 + 3 + 2 + 2.008, 12);
    // Streamed: the prompt waits 7, each token 0.5.
    const ss = evaluateGeneration(q, ['server', 'server']);
    expect(ss.ttftMs).toBeCloseTo(6 + 7 + 2 + 4 + 2.008, 12);
    expect(ss.tpotMs).toBeCloseTo(0.5 + 1 + 2, 12);
    // Unstated, each defaults to the one before it: a decode pass waits the prefill's, a token a decode pass's.
    expect(evaluateGeneration({ ...inst, serverQueueMs: 7 }, ['client', 'server']).tpotMs).toBeCloseTo(4 + 6 + 7 + 2 + 2.008, 12);
    expect(evaluateGeneration({ ...inst, serverQueueMs: 7, serverDecodeQueueMs: 3 }, ['server', 'server']).tpotMs).toBeCloseTo(3 + 1 + 2, 12);
    // The contract instance prices the same E2E for a split: the uplink's latency carries 7 + 4 · 3.
    const c = generationAsContractInstance(q);
    expect(c.uplink.latencyMs).toBeCloseTo(5 * 5 + 7 + 4 * 3, 12);
    expect(evaluatePlacement(c, ['client', 'server']).latencyMs).toBeCloseTo(cs.e2eMs, 9);
  });

  it('has no TPOT without decode passes', () => {
    const got = evaluateGeneration({ ...inst, decodeSteps: 0 }, ['client', 'server']);
    expect(got.tpotMs).toBe(0);
    expect(got.e2eMs).toBe(got.ttftMs);
  });

  it('rejects a placement of the wrong length or with an unknown side', () => {
    expect(() => evaluateGeneration(inst, ['client'])).toThrow(RangeError);
    expect(() => evaluateGeneration(inst, ['client', 'edge' as Location])).toThrow(/placement\[1\] must be 'client' or 'server'/);
  });

  it('prices E2E as instanceFromMeasured does, for every placement without server-side decoding', () => {
    const rnd = seededRandom(404);
    let checked = 0;
    for (let t = 0; t < 60; t++) {
      const S = 1 + Math.floor(rnd() * 7);
      const profile: MeasuredProfile = {
        stages: Array.from({ length: S }, (_, i) => ({
          name: `s${i}`,
          inBytesPerToken: Math.round(rnd() * 3000),
          clientPrefillMs: rnd() * 50,
          clientDecodeMs: rnd() * 9,
          serverPrefillMs: rnd() * 9,
          serverDecodeMs: rnd() * 2,
        })),
        outBytesPerPass: 8,
        uplink: { latencyMs: rnd() * 30, bytesPerMs: 100 + rnd() * 1e4 },
        downlink: { latencyMs: rnd() * 30, bytesPerMs: 100 + rnd() * 1e5 },
        slaMs: 100,
        promptTokens: 1 + Math.floor(rnd() * 200),
        decodeSteps: Math.floor(rnd() * 40),
        serverEntryWorkPerPass: rnd() < 0.5 ? rnd() : 0,
      };
      const contract = instanceFromMeasured(profile);
      const gen: GenerationInstance = {
        stages: profile.stages,
        promptTokens: profile.promptTokens,
        decodeSteps: profile.decodeSteps,
        outBytesPerPass: 8,
        uplink: profile.uplink,
        downlink: profile.downlink,
        slo: { e2eMs: 100 },
        serverEntryWork: profile.serverEntryWorkPerPass,
        serverDecoding: false,
      };
      expect(generationAsContractInstance(gen)).toEqual(contract);
      for (let mask = 0; mask < 1 << S; mask++) {
        const p = Array.from({ length: S }, (_, i): Location => (mask & (1 << i) ? 'server' : 'client'));
        const a = evaluatePlacement(contract, p);
        const b = evaluateGeneration(gen, p);
        expect(close(b.e2eMs, a.latencyMs)).toBe(true);
        expect(close(b.serverWork, a.serverWork)).toBe(true);
        expect(b.switches).toBe(a.switches);
        // A split plan is priced the same whether or not server-side decoding is on.
        if (p.includes('client')) expect(evaluateGeneration({ ...gen, serverDecoding: true }, p)).toEqual(b);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(1000);
  });
});

describe('sloCheck and sloRatio', () => {
  it('judge only the stated SLOs, each within 1e-9 relative', () => {
    const cost = { ttftMs: 100, tpotMs: 20, e2eMs: 500 };
    expect(sloCheck({ ttftMs: 100 * (1 + 5e-10), tpotMs: 19 }, cost)).toEqual({ met: { ttftMs: true, tpotMs: false }, feasible: false });
    expect(sloCheck({ e2eMs: 500 }, cost)).toEqual({ met: { e2eMs: true }, feasible: true });
    expect(sloRatio({ ttftMs: 50, tpotMs: 10, e2eMs: 1000 }, cost)).toBe(2);
    expect(sloRatio({ e2eMs: 1000 }, cost)).toBe(0.5);
  });
});
