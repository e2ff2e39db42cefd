import {
  evaluateGeneration,
  evaluatePlacement,
  generationFromShape,
  instanceFromMeasured,
  instanceFromShape,
  linkFromMbps,
  requestCosts,
  validateGenerationInstance,
  validateInstance,
  type Location,
  type MeasuredProfile,
  type ShapeScenario,
  type TransformerShape,
} from './index';
import { gptLikeShape } from './random-instances.fixture';

const gpt2: TransformerShape = gptLikeShape(12, 768);
const d = 768;

describe('requestCosts', () => {
  it('cuts a model into embed, attn/mlp per block and head, with the real boundary sizes', () => {
    const c = requestCosts(gpt2, { kind: 'prefill', tokens: 128 });
    expect(c.stages.map((s) => s.name)).toEqual(['embed', ...Array.from({ length: 12 }, (_, i) => [`block.${i}.attn`, `block.${i}.mlp`]).flat(), 'head']);
    expect(c.stages[0].inBytes).toBe(128 * 8); // token ids
    expect(c.stages[1].inBytes).toBe(128 * 4 * d); // float32 hidden state
    expect(c.stages[25].inBytes).toBe(128 * 4 * d);
    expect(c.outBytes).toBe(8); // one token id
    expect(requestCosts(gpt2, { kind: 'prefill', tokens: 128, output: 'logits' }).outBytes).toBe(128 * 50257 * 4);
    expect(c.passes).toBe(1);
  });

  it('counts attention FLOPs with the n² term and MLP FLOPs linear in n', () => {
    const at = (n: number) => requestCosts(gpt2, { kind: 'prefill', tokens: n }).stages;
    expect(at(512)[1].prefillFlops).toBe(8 * 512 * d * d + 4 * 512 * 512 * d);
    expect(at(512)[2].prefillFlops).toBe(4 * 512 * d * 4 * d);
    expect(at(1024)[2].prefillFlops / at(512)[2].prefillFlops).toBeCloseTo(2, 12);
    expect(at(1024)[1].prefillFlops / at(512)[1].prefillFlops).toBeGreaterThan(2.1);
    // 12 blocks of GPT-2 small at n = 512: about 96.6 GFLOP.
    const blocks = at(512)
      .slice(1, 25)
      .reduce((a, s) => a + s.prefillFlops, 0);
    expect(blocks / 1e9).toBeCloseTo(96.6, 0);
  });

  it('prices a decode step at context t', () => {
    const c = requestCosts(gpt2, { kind: 'decode', context: 300 });
    expect(c.stages[1].decodeFlops).toBe(8 * d * d + 4 * 300 * d);
    expect(c.stages[1].prefillFlops).toBe(0);
    expect(c.stages[1].inBytes).toBe(4 * d);
    expect(c.passes).toBe(1);
  });

  it('prices a generation as the prefill plus every decode step at its own context', () => {
    const n = 100;
    const m = 20;
    const gen = requestCosts(gpt2, { kind: 'generation', promptTokens: n, decodeSteps: m });
    const pre = requestCosts(gpt2, { kind: 'prefill', tokens: n });
    let decodeAttn = 0;
    for (let s = 1; s <= m; s++) decodeAttn += requestCosts(gpt2, { kind: 'decode', context: n + s }).stages[1].decodeFlops;
    expect(gen.stages[1].prefillFlops).toBe(pre.stages[1].prefillFlops);
    expect(gen.stages[1].decodeFlops).toBeCloseTo(decodeAttn, 0);
    expect(gen.stages[1].inBytes).toBe((n + m) * 4 * d);
    expect(gen.outBytes).toBe((m + 1) * 8);
    expect(gen.passes).toBe(m + 1);
  });

  it('doubles boundaries and adds cross-attention for an encoder-decoder', () => {
    const t: TransformerShape = { ...gpt2, name: 't', dModel: 512, dFF: 2048, encoderLayers: 6, decoderLayers: 6, crossAttention: true };
    const c = requestCosts(t, { kind: 'prefill', tokens: 64 });
    expect(c.stages[1].name).toBe('encoder.0.attn');
    expect(c.stages[13].name).toBe('decoder.0.attn');
    expect(c.stages[13].prefillFlops).toBeGreaterThan(c.stages[1].prefillFlops);
    expect(c.stages[1].inBytes).toBe(2 * 64 * 4 * 512);
    expect(() => requestCosts(t, { kind: 'decode', context: 5 })).toThrow(/decoder-only/);
  });
});

describe('instanceFromShape', () => {
  const scenario: ShapeScenario = {
    model: gpt2,
    request: { kind: 'generation', promptTokens: 64, decodeSteps: 9 },
    client: { flopsPerSecond: 1e12, efficiency: 0.5, overheadMsPerStage: 0.1 },
    server: { flopsPerSecond: 50e12 },
    uplink: linkFromMbps(10, 80),
    downlink: linkFromMbps(5, 400),
    slaMs: 500,
    resolutionMs: 0.1,
  };

  it('builds a valid instance: times from FLOP/s, links scaled by the number of passes', () => {
    const inst = validateInstance(instanceFromShape(scenario));
    const costs = requestCosts(gpt2, scenario.request);
    const s = costs.stages[2];
    expect(inst.stages[2].clientMs).toBeCloseTo((s.prefillFlops + s.decodeFlops) / (0.5e12 / 1000) + 10 * 0.1, 9);
    expect(inst.stages[2].serverMs).toBeCloseTo((s.prefillFlops + s.decodeFlops) / 50e9, 9);
    expect(inst.stages[2].serverWork).toBe(inst.stages[2].serverMs);
    expect(inst.uplink).toEqual({ latencyMs: 100, bytesPerMs: 10_000 });
    expect(inst.downlink.latencyMs).toBe(50);
    expect(inst.resolutionMs).toBe(0.1);
  });

  it('makes all-server pay each link latency once per pass', () => {
    const inst = instanceFromShape(scenario);
    const allServer = evaluatePlacement(
      inst,
      inst.stages.map(() => 'server'),
    );
    const compute = inst.stages.reduce((a, st) => a + st.serverMs, 0);
    const bytes = (73 * 8) / 10_000 + (10 * 8) / 50_000;
    expect(allServer.latencyMs).toBeCloseTo(compute + 10 * (10 + 5) + bytes, 9);
  });
});

describe('generationFromShape', () => {
  const scenario = {
    model: gpt2,
    request: { kind: 'generation', promptTokens: 64, decodeSteps: 9 } as const,
    client: { flopsPerSecond: 1e12, efficiency: 0.5, overheadMsPerStage: 0.1 },
    server: { flopsPerSecond: 50e12 },
    uplink: linkFromMbps(10, 80),
    downlink: linkFromMbps(5, 400),
    slo: { e2eMs: 500 },
  };

  it("prices each pass as the whole-request instance does in sum, and states each attention stage's KV cache", () => {
    const gen = validateGenerationInstance(generationFromShape(scenario));
    const whole = instanceFromShape({ ...scenario, slaMs: 500 });
    gen.stages.forEach((st, i) => {
      // The per-pass figures add up to the whole request's (prefill + m mean decode passes, overhead per pass).
      expect(st.clientPrefillMs + 9 * st.clientDecodeMs).toBeCloseTo(whole.stages[i].clientMs, 9);
      expect(st.serverPrefillMs + 9 * st.serverDecodeMs).toBeCloseTo(whole.stages[i].serverMs, 9);
      expect(st.inBytesPerToken * 73).toBeCloseTo(whole.stages[i].inBytes, 9);
      expect(st.kvBytesPerToken).toBe(st.name.endsWith('.attn') ? 2 * gpt2.dModel * gpt2.activationBytes : undefined);
    });
    expect(gen.outBytesPerPass * 10).toBe(whole.outBytes);
    // Stepped, every placement's E2E equals the whole-request instance's latency.
    const placement = gen.stages.map((_, i): Location => (i % 3 === 0 ? 'server' : 'client'));
    expect(evaluateGeneration({ ...gen, serverDecoding: false }, placement).e2eMs).toBeCloseTo(evaluatePlacement(whole, placement).latencyMs, 6);
  });

  it('refuses a request that is not a generation with decode steps', () => {
    expect(() => generationFromShape({ ...scenario, request: { kind: 'prefill', tokens: 8 } })).toThrow(/request must be a generation with decodeSteps >= 1/);
    expect(() => generationFromShape({ ...scenario, request: { kind: 'generation', promptTokens: 8, decodeSteps: 0 } })).toThrow(RangeError);
  });
});

describe('instanceFromMeasured', () => {
  // Two measured stages, a 32-token prompt and 4 decode steps.
  const measured: MeasuredProfile = {
    stages: [
      { name: 'embed', inBytesPerToken: 8, clientPrefillMs: 1, clientDecodeMs: 0.1, serverPrefillMs: 0.2, serverDecodeMs: 0.01 },
      { name: 'head', inBytesPerToken: 3072, clientPrefillMs: 9, clientDecodeMs: 2, serverPrefillMs: 1, serverDecodeMs: 0.5 },
    ],
    outBytesPerPass: 8,
    uplink: { latencyMs: 10, bytesPerMs: 1000 },
    downlink: { latencyMs: 5, bytesPerMs: 4000 },
    slaMs: 300,
    promptTokens: 32,
    decodeSteps: 4,
  };

  it('prices a generation from per-stage prefill and decode times', () => {
    const inst = instanceFromMeasured(measured);
    expect(inst.stages[1]).toEqual({ name: 'head', clientMs: 17, serverMs: 3, serverWork: 3, inBytes: 36 * 3072 });
    expect(inst.stages[0].inBytes).toBe(36 * 8);
    expect(inst.outBytes).toBe(40);
    expect(inst.uplink.latencyMs).toBe(50);
    expect(inst.downlink.latencyMs).toBe(25);
    expect(inst.resolutionMs).toBeUndefined();
  });

  it('rejects a negative measured time naming the stage', () => {
    const [embed, head] = measured.stages;
    expect(() => instanceFromMeasured({ ...measured, stages: [{ ...embed, clientPrefillMs: -1 }, head] })).toThrow(
      'stages[0].clientPrefillMs must be a finite number >= 0, given -1',
    );
  });
});
