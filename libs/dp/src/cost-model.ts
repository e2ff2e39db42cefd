import type { GenerationInstance, GenerationStage, Slo } from './generation';
import type { Link, PlacementInstance, Stage } from './types';

/**
 * The shape of a transformer, enough to count FLOPs and boundary bytes per stage.
 * Stages are `embed`, then per block an attention stage and an MLP stage, then `head`
 * (2·layers + 2 stages). Invariant: positive integer sizes.
 */
export interface TransformerShape {
  readonly name: string;
  /** Hidden size d. */
  readonly dModel: number;
  /** Inner size of the MLP (usually 4d). */
  readonly dFF: number;
  /** Blocks with bidirectional self-attention (BERT, ViT, the encoder of an encoder-decoder). */
  readonly encoderLayers: number;
  /** Blocks with causal self-attention (GPT-2, the decoder of an encoder-decoder). */
  readonly decoderLayers: number;
  /**
   * Decoder blocks also attend to the encoder output (the vanilla Transformer). Their
   * attention stage then includes cross-attention, and since the stages form a chain, every
   * boundary carries two streams (source and target states), i.e. twice the bytes.
   */
  readonly crossAttention: boolean;
  /** Bytes entering `embed` per token: 8 for int64 token ids, the raw patch for ViT. */
  readonly inputBytesPerToken: number;
  /** FLOPs of `embed` per token besides adding positions: 0 for a table lookup, 2·patch·d for a patch projection. */
  readonly embedFlopsPerToken: number;
  /** `lm`: logits over a vocabulary; `classifier`: one pooled row mapped to classes. */
  readonly headKind: 'lm' | 'classifier';
  /** Vocabulary size (`lm`) or number of classes (`classifier`). */
  readonly headOutputs: number;
  /** Bytes per activation element crossing a boundary: 4 (float32) or 2 (float16). */
  readonly activationBytes: number;
}

/**
 * What one request asks of the model:
 * - `prefill`: one forward pass over `tokens` tokens (the paper's single-pass problem);
 *   `output` is what leaves the head: the next token id (default for `lm`) or the logits of
 *   every position (a classifier always returns its class logits).
 * - `decode`: one autoregressive step at context `context` (KV cache of context-1 tokens).
 * - `generation`: a prompt of `promptTokens` then `decodeSteps` decode steps, priced as a
 *   whole (DESIGN "What a plan covers"): prefill once, each decode step at its own context.
 * `decode` and `generation` need a decoder-only shape.
 */
export type RequestShape =
  | { readonly kind: 'prefill'; readonly tokens: number; readonly output?: 'token' | 'logits' }
  | { readonly kind: 'decode'; readonly context: number }
  | { readonly kind: 'generation'; readonly promptTokens: number; readonly decodeSteps: number };

/** A device's speed. Compute time = FLOPs / (flopsPerSecond · efficiency) + a fixed overhead per stage and pass. */
export interface DeviceSpec {
  /** Peak FLOP/s, > 0. */
  readonly flopsPerSecond: number;
  /** Fraction of peak reached on prefill, in (0, 1]; default 1. */
  readonly efficiency?: number;
  /** Fraction of peak reached on decode steps (memory-bound), in (0, 1]; default `efficiency`. */
  readonly decodeEfficiency?: number;
  /** Fixed cost of running one stage once (launch, dispatch), ms; default 0. */
  readonly overheadMsPerStage?: number;
}

/**
 * FLOPs and boundary bytes of one stage for a whole request.
 * `prefillFlops` + `decodeFlops` = FLOPs; `inBytes` the total of all passes.
 */
export interface StageCost {
  readonly name: string;
  readonly prefillFlops: number;
  readonly decodeFlops: number;
  readonly inBytes: number;
}

/**
 * Per-stage costs of a request. `passes` is the number of forward passes (1 + decode
 * steps): every boundary crossing happens once per pass and pays the link latency each time.
 */
export interface RequestCosts {
  readonly stages: readonly StageCost[];
  readonly outBytes: number;
  readonly passes: number;
}

/** Everything {@link instanceFromShape} needs. */
export interface ShapeScenario {
  readonly model: TransformerShape;
  readonly request: RequestShape;
  readonly client: DeviceSpec;
  readonly server: DeviceSpec;
  /** One-way link per pass; scaled by the number of passes in the instance. */
  readonly uplink: Link;
  readonly downlink: Link;
  readonly slaMs: number;
  readonly resolutionMs?: number;
  /** Unit of `serverWork`: server compute milliseconds (default) or GFLOPs. */
  readonly serverWorkUnit?: 'ms' | 'gflop';
}

/** Bytes of one token id (int64). */
const TOKEN_ID_BYTES = 8;

function positive(name: string, v: number, integer = false): void {
  if (!(Number.isFinite(v) && v > 0) || (integer && !Number.isInteger(v))) {
    throw new RangeError(`${name} must be a finite ${integer ? 'integer' : 'number'} > 0, given ${v}`);
  }
}

/** A link from a one-way latency and a rate in megabits per second (10^6 bit/s). O(1). */
export function linkFromMbps(latencyMs: number, megabitsPerSecond: number): Link {
  positive('megabitsPerSecond', megabitsPerSecond);
  return { latencyMs, bytesPerMs: (megabitsPerSecond * 1e6) / 8 / 1000 };
}

/** FLOPs of one attention stage for `q` new tokens attending to `ctx` positions. */
function attentionFlops(d: number, q: number, ctx: number, cross: boolean, crossCtx: number): number {
  // Q, K, V, O projections (4 d×d matmuls, 2 FLOPs per multiply-add) + QKᵀ and A·V (the n² term).
  let f = 8 * q * d * d + 4 * q * ctx * d;
  // Cross-attention: Q and O on the new tokens, K and V over the source, scores against it.
  if (cross) f += 4 * q * d * d + 4 * crossCtx * d * d + 4 * q * crossCtx * d;
  return f;
}

/**
 * Counts FLOPs and boundary bytes per stage for `request` on `model`:
 * - embed: `embedFlopsPerToken` + d (position add) per token; input token ids (8 B each) or patches;
 * - attention: 8·q·d² projections + 4·q·ctx·d scores (the n² term at prefill, q = ctx = n;
 *   counted in full for causal attention, as dense kernels compute it) + cross-attention;
 * - MLP: 4·q·d·dFF; head: 2·d·V per position whose logits are needed (`lm`), or
 *   2·d² + 2·d·C for a pooled classifier;
 * - every other boundary: the hidden state, q·d·activationBytes (×2 with cross-attention);
 * - out: one token id per pass, all logits, or the class logits.
 * A generation sums prefill(n) and each decode step s = 1..m at context n + s exactly (the
 * context term is linear in t, so the sum is closed-form).
 * @throws RangeError on non-positive sizes, or `decode`/`generation` on a model with encoder layers.
 * Complexity: O(layers).
 */
export function requestCosts(model: TransformerShape, request: RequestShape): RequestCosts {
  const d = model.dModel;
  positive('dModel', d, true);
  positive('dFF', model.dFF, true);
  positive('headOutputs', model.headOutputs, true);
  positive('activationBytes', model.activationBytes);
  const streams = model.crossAttention ? 2 : 1;
  let n: number;
  let m: number;
  let logitsOut = false;
  if (request.kind === 'prefill') {
    positive('tokens', request.tokens, true);
    n = request.tokens;
    m = 0;
    logitsOut = request.output === 'logits';
  } else {
    if (model.encoderLayers > 0)
      throw new RangeError(`${request.kind} requests need a decoder-only model; ${model.name} has ${model.encoderLayers} encoder layers`);
    if (request.kind === 'decode') {
      positive('context', request.context, true);
      // A lone decode step: one token at context t, i.e. the generation formula with no prompt pass.
      n = 0;
      m = 1;
    } else {
      positive('promptTokens', request.promptTokens, true);
      if (!(Number.isInteger(request.decodeSteps) && request.decodeSteps >= 0))
        throw new RangeError(`decodeSteps must be an integer >= 0, given ${request.decodeSteps}`);
      n = request.promptTokens;
      m = request.decodeSteps;
    }
  }
  // Decode steps: Σ over steps of the context. A lone decode step has context `context`.
  const contextSum = request.kind === 'decode' ? request.context : m * n + (m * (m + 1)) / 2;
  const tokens = n + m; // tokens crossing each boundary over all passes
  const hidden = d * model.activationBytes * streams;
  const stages: StageCost[] = [];
  stages.push({
    name: 'embed',
    prefillFlops: n * streams * (model.embedFlopsPerToken + d),
    decodeFlops: m * (model.embedFlopsPerToken + d),
    inBytes: tokens * streams * model.inputBytesPerToken,
  });
  const layers = model.encoderLayers + model.decoderLayers;
  for (let l = 0; l < layers; l++) {
    const inDecoder = l >= model.encoderLayers;
    const cross = model.crossAttention && inDecoder;
    const prefix = model.crossAttention ? (inDecoder ? `decoder.${l - model.encoderLayers}` : `encoder.${l}`) : `block.${l}`;
    stages.push({
      name: `${prefix}.attn`,
      prefillFlops: attentionFlops(d, n, n, cross, n),
      // Σ_s (8d² + 4·t_s·d): linear in the context, so summed exactly.
      decodeFlops: m * 8 * d * d + 4 * contextSum * d,
      inBytes: tokens * hidden,
    });
    stages.push({ name: `${prefix}.mlp`, prefillFlops: 4 * n * d * model.dFF, decodeFlops: 4 * m * d * model.dFF, inBytes: tokens * hidden });
  }
  let headPrefill: number;
  let headDecode: number;
  let outBytes: number;
  if (model.headKind === 'classifier') {
    headPrefill = n > 0 ? 2 * d * d + 2 * d * model.headOutputs : 0;
    headDecode = m * (2 * d * d + 2 * d * model.headOutputs);
    outBytes = (n > 0 ? 1 : 0) * model.headOutputs * model.activationBytes + m * model.headOutputs * model.activationBytes;
  } else {
    const prefillRows = n > 0 ? (logitsOut ? n : 1) : 0;
    headPrefill = prefillRows * 2 * d * model.headOutputs;
    headDecode = m * 2 * d * model.headOutputs;
    outBytes = logitsOut ? n * model.headOutputs * model.activationBytes : ((n > 0 ? 1 : 0) + m) * TOKEN_ID_BYTES;
  }
  stages.push({ name: 'head', prefillFlops: headPrefill, decodeFlops: headDecode, inBytes: tokens * hidden });
  return { stages, outBytes, passes: (n > 0 ? 1 : 0) + m };
}

function computeMs(device: DeviceSpec, prefillFlops: number, decodeFlops: number, passes: number): number {
  positive('flopsPerSecond', device.flopsPerSecond);
  const eff = device.efficiency ?? 1;
  const decodeEff = device.decodeEfficiency ?? eff;
  const perMs = device.flopsPerSecond / 1000;
  return prefillFlops / (perMs * eff) + decodeFlops / (perMs * decodeEff) + passes * (device.overheadMsPerStage ?? 0);
}

/** Scales a per-pass link to a whole request: every crossing pays the latency once per pass. */
function scaledLink(link: Link, passes: number): Link {
  return { latencyMs: link.latencyMs * passes, bytesPerMs: link.bytesPerMs };
}

/**
 * Builds a placement instance from analytic FLOPs ({@link requestCosts}): compute times from
 * each device's FLOP/s, efficiency and per-stage overhead; transfers from the links, whose
 * latency is multiplied by the number of passes (a generation of m decode steps crosses each
 * boundary m+1 times) while the bytes are the total over all passes. `serverWork` is the
 * server compute time in ms (or the stage's GFLOPs with `serverWorkUnit: 'gflop'`).
 * The result satisfies validateInstance's rules for valid inputs.
 * @throws RangeError on non-positive sizes or speeds.
 * Complexity: O(layers).
 */
export function instanceFromShape(scenario: ShapeScenario): PlacementInstance {
  const costs = requestCosts(scenario.model, scenario.request);
  const stages: Stage[] = costs.stages.map((c) => {
    const serverMs = computeMs(scenario.server, c.prefillFlops, c.decodeFlops, costs.passes);
    return {
      name: c.name,
      clientMs: computeMs(scenario.client, c.prefillFlops, c.decodeFlops, costs.passes),
      serverMs,
      serverWork: scenario.serverWorkUnit === 'gflop' ? (c.prefillFlops + c.decodeFlops) / 1e9 : serverMs,
      inBytes: c.inBytes,
    };
  });
  return withOptionalResolution(
    {
      stages,
      outBytes: costs.outBytes,
      uplink: scaledLink(scenario.uplink, costs.passes),
      downlink: scaledLink(scenario.downlink, costs.passes),
      slaMs: scenario.slaMs,
    },
    scenario.resolutionMs,
  );
}

/**
 * Builds a generation instance (docs/placement.md, per pass) from analytic FLOPs for a
 * `generation` request of a decoder-only model: prefill pass times from the prompt's FLOPs,
 * decode pass times as the mean over the m steps, each with the device's per-stage overhead
 * once per pass; `inBytesPerToken` and `outBytesPerPass` are the request's bytes spread over
 * its tokens and passes; each `*.attn` stage keeps K and V per token (`kvBytesPerToken` =
 * 2 · dModel · activationBytes), which phased instances read. Server work is the server's
 * compute time. The links are per pass, as given.
 * @throws RangeError when the request is not a generation with m >= 1, or as requestCosts.
 * Complexity: O(layers).
 */
export function generationFromShape(scenario: Omit<ShapeScenario, 'slaMs' | 'resolutionMs' | 'serverWorkUnit'> & { readonly slo: Slo }): GenerationInstance {
  const { request, model } = scenario;
  if (request.kind !== 'generation' || request.decodeSteps < 1) {
    throw new RangeError(`request must be a generation with decodeSteps >= 1, given ${JSON.stringify(request)}`);
  }
  const costs = requestCosts(model, request);
  const n = request.promptTokens;
  const m = request.decodeSteps;
  const perPass = (device: DeviceSpec, prefillFlops: number, decodeFlops: number): [number, number] => [
    computeMs(device, prefillFlops, 0, 1),
    computeMs(device, 0, decodeFlops / m, 1),
  ];
  const stages: GenerationStage[] = costs.stages.map((c) => {
    const [clientPrefillMs, clientDecodeMs] = perPass(scenario.client, c.prefillFlops, c.decodeFlops);
    const [serverPrefillMs, serverDecodeMs] = perPass(scenario.server, c.prefillFlops, c.decodeFlops);
    return {
      name: c.name,
      clientPrefillMs,
      serverPrefillMs,
      clientDecodeMs,
      serverDecodeMs,
      inBytesPerToken: c.inBytes / (n + m),
      ...(c.name.endsWith('.attn') ? { kvBytesPerToken: 2 * model.dModel * model.activationBytes } : {}),
    };
  });
  return {
    stages,
    promptTokens: n,
    decodeSteps: m,
    outBytesPerPass: costs.outBytes / costs.passes,
    uplink: scenario.uplink,
    downlink: scenario.downlink,
    slo: scenario.slo,
  };
}

/**
 * Measured costs of one stage, per client class or for the server: prefill time at the
 * class's prompt length and the mean time of one decode step over the generation.
 */
export interface MeasuredStage {
  readonly name: string;
  /** Bytes entering the stage per token (8 for `embed`, 4·nEmbd for float32 hidden states). */
  readonly inBytesPerToken: number;
  readonly clientPrefillMs: number;
  readonly clientDecodeMs: number;
  readonly serverPrefillMs: number;
  readonly serverDecodeMs: number;
}

/** Everything {@link instanceFromMeasured} needs: what the planner knows of one client and request class. */
export interface MeasuredProfile {
  readonly stages: readonly MeasuredStage[];
  /** Bytes leaving the head per pass (8 for a sampled token id). */
  readonly outBytesPerPass: number;
  /** One-way links as measured (per crossing). */
  readonly uplink: Link;
  readonly downlink: Link;
  /** SLA on the whole generation's end-to-end latency, ms. */
  readonly slaMs: number;
  /** Prompt length n of the request class. */
  readonly promptTokens: number;
  /** Decode steps m of the request class (0: a single forward pass). */
  readonly decodeSteps: number;
  readonly resolutionMs?: number;
  /** Server work of one hand-over (receiving, scheduling, answering one step), charged per entry to the server per pass. Default 0. */
  readonly serverEntryWorkPerPass?: number;
}

/**
 * Builds a placement instance for a whole generation from measured per-stage times:
 * clientMs = clientPrefillMs + m·clientDecodeMs, serverMs likewise, serverWork = serverMs;
 * inBytes = (n + m)·inBytesPerToken; outBytes = (m + 1)·outBytesPerPass; each link's latency
 * is multiplied by m + 1 passes (every crossing pays it again), its bandwidth unchanged;
 * `serverEntryWork` = (m + 1)·serverEntryWorkPerPass. With m = 0 this is the single-pass problem.
 * @throws RangeError on an empty stage list, a negative or non-finite time, or n < 1 / m < 0.
 * Complexity: O(S).
 */
export function instanceFromMeasured(profile: MeasuredProfile): PlacementInstance {
  const n = profile.promptTokens;
  const m = profile.decodeSteps;
  positive('promptTokens', n, true);
  if (!(Number.isInteger(m) && m >= 0)) throw new RangeError(`decodeSteps must be an integer >= 0, given ${m}`);
  if (profile.stages.length === 0) throw new RangeError('stages must be a non-empty array, given []');
  const passes = m + 1;
  const stages: Stage[] = profile.stages.map((s, i) => {
    for (const key of ['inBytesPerToken', 'clientPrefillMs', 'clientDecodeMs', 'serverPrefillMs', 'serverDecodeMs'] as const) {
      const v = s[key];
      if (!(Number.isFinite(v) && v >= 0)) throw new RangeError(`stages[${i}].${key} must be a finite number >= 0, given ${v}`);
    }
    const serverMs = s.serverPrefillMs + m * s.serverDecodeMs;
    return {
      name: s.name,
      clientMs: s.clientPrefillMs + m * s.clientDecodeMs,
      serverMs,
      serverWork: serverMs,
      inBytes: (n + m) * s.inBytesPerToken,
    };
  });
  const entry = profile.serverEntryWorkPerPass ?? 0;
  if (!(Number.isFinite(entry) && entry >= 0)) throw new RangeError(`serverEntryWorkPerPass must be a finite number >= 0, given ${entry}`);
  return withOptionalResolution(
    {
      stages,
      outBytes: passes * profile.outBytesPerPass,
      uplink: scaledLink(profile.uplink, passes),
      downlink: scaledLink(profile.downlink, passes),
      slaMs: profile.slaMs,
      ...(entry > 0 ? { serverEntryWork: passes * entry } : {}),
    },
    profile.resolutionMs,
  );
}

function withOptionalResolution(instance: PlacementInstance, resolutionMs: number | undefined): PlacementInstance {
  return resolutionMs === undefined ? instance : { ...instance, resolutionMs };
}
