/**
 * Extension of CONTRACT §3: a whole generation (a prompt of n tokens, then m decode passes)
 * priced pass by pass, with the latency objectives serving systems state (vLLM, DistServe):
 * time to first token (TTFT), time per output token (TPOT) and end to end (E2E). The
 * contract's single-SLA instances, solvers and answers are untouched; this module adds a
 * second instance kind beside them.
 */
import { approxEqual, approxLessOrEqual, transferMs } from './evaluate';
import type { Algorithm, Link, Location, Placement, PlacementInstance, Stage } from './types';

/**
 * One stage of a generation, priced per pass. Same field names as `MeasuredStage` (a
 * measured profile's stage is a generation stage). Invariant (checked by
 * validateGenerationInstance): every number finite and >= 0.
 */
export interface GenerationStage {
  readonly name: string;
  /** Compute time of the prefill pass (all n prompt tokens) on the client, ms. */
  readonly clientPrefillMs: number;
  /** Compute time of the prefill pass on the server, ms. */
  readonly serverPrefillMs: number;
  /** Compute time of one decode pass (one token) on the client, ms. */
  readonly clientDecodeMs: number;
  /** Compute time of one decode pass on the server, ms. */
  readonly serverDecodeMs: number;
  /** Bytes entering the stage per token (8 for token ids, 4·nEmbd for a float32 hidden state). */
  readonly inBytesPerToken: number;
  /** Server work of the prefill pass when the stage runs on the server; default `serverPrefillMs`. */
  readonly serverPrefillWork?: number;
  /** Server work of one decode pass on the server; default `serverDecodeMs`. */
  readonly serverDecodeWork?: number;
  /**
   * Bytes of KV cache the stage keeps per token (an attention stage; 0, the default, for a
   * stage that keeps nothing between passes). Only phased instances read it: a stage with a
   * KV cache that changes side between the prefill and the decode moves its prompt's cache.
   */
  readonly kvBytesPerToken?: number;
}

/**
 * The server's compute of one all-server generation step run through every stage at once
 * (with server-side decoding): what the server spends on a whole-model pass, which can differ
 * from the sum of the stages run one by one (one fused call instead of a call per stage, or
 * batched with other sessions). Invariant: every number finite and >= 0.
 */
export interface WholeModelCost {
  /** Compute time of the prefill pass (all n prompt tokens, the head on the last row), ms. */
  readonly serverPrefillMs: number;
  /** Compute time of one decode pass, ms. */
  readonly serverDecodeMs: number;
  /** Server work of the prefill pass; default `serverPrefillMs`. */
  readonly serverPrefillWork?: number;
  /** Server work of one decode pass; default `serverDecodeMs`. */
  readonly serverDecodeWork?: number;
}

/**
 * The latency objectives of a generation, ms; at least one is stated, each > 0.
 * A plan meets them when TTFT <= `ttftMs`, TPOT <= `tpotMs` and E2E <= `e2eMs` (each
 * within 1e-9 relative), for those stated.
 */
export interface Slo {
  /** End-to-end latency of the whole generation (the contract's `slaMs`). */
  readonly e2eMs?: number;
  /** Time to first token: the prefill pass, from the request to the first token on the client. */
  readonly ttftMs?: number;
  /** Time per output token after the first: one decode pass. */
  readonly tpotMs?: number;
}

/** The objectives of {@link Slo}, in the order answers report them. */
export const SLO_KEYS = ['ttftMs', 'tpotMs', 'e2eMs'] as const;

/** One of {@link SLO_KEYS}. */
export type SloKey = (typeof SLO_KEYS)[number];

/**
 * A generation placement problem: place each stage on the client or the server so that the
 * server work is least while every stated SLO is met. Every pass (the prefill, then each
 * decode pass) runs the stages in order with the same placement; a crossing carries
 * `inBytesPerToken` per token of the pass (n in the prefill, 1 in a decode pass), and when
 * the head runs on the server each pass sends `outBytesPerPass` down.
 *
 * With `serverDecoding` (the default), the all-server placement is priced as a serving
 * system runs it: the prompt goes up once, the server runs the decode passes back to back
 * and streams each token down, so its decode passes cross nothing and it enters the server
 * once. Every other placement crosses at every pass, paying the link latency again.
 *
 * Invariant (checked by validateGenerationInstance): `stages` non-empty; `promptTokens` an
 * integer >= 1; `decodeSteps` an integer >= 0; `outBytesPerPass` and `serverEntryWork` >= 0;
 * `slo` states at least one objective, each > 0; `resolutionMs`, when present, > 0.
 */
export interface GenerationInstance {
  /** Marker telling `tandem plan` this is a generation instance (optional in libs/dp). */
  readonly generation?: true;
  readonly stages: readonly GenerationStage[];
  /** Prompt length n (tokens processed by the prefill pass). */
  readonly promptTokens: number;
  /** Decode passes m after the prefill (the generation yields m + 1 tokens). */
  readonly decodeSteps: number;
  /** Bytes leaving the head per pass (8 for a sampled token id). */
  readonly outBytesPerPass: number;
  /** Client to server, one way, per crossing. */
  readonly uplink: Link;
  /** Server to client, one way, per crossing. */
  readonly downlink: Link;
  readonly slo: Slo;
  /** Server work of one entry to the server in one pass (receiving, scheduling, answering); default 0. */
  readonly serverEntryWork?: number;
  /** Whether an all-server plan decodes on the server and streams tokens (default true). */
  readonly serverDecoding?: boolean;
  /**
   * The all-server plan's compute when it decodes on the server, in place of the sum of its
   * stages' (default: that sum). The stages then price only splits, whose server ranges run
   * stage by stage: an executor that runs a whole-model step as one call prices it here.
   * Ignored without `serverDecoding`.
   */
  readonly serverWholeModel?: WholeModelCost;
  /**
   * Time a step waits in the server's queue before it runs, ms (default 0): paid at every
   * entry to the server in every pass (a split waits once per entry per pass, as it pays the
   * link's latency), and by an all-server plan with server-side decoding once for its prompt
   * and once per decoded token (each is one step in the server's queue). It prices waiting
   * behind other requests' work, which a stage time inflated for load does not: a split that
   * leaves one short stage on the server still waits for whatever runs before it.
   */
  readonly serverQueueMs?: number;
  /**
   * The queue wait of each entry to the server in a decode pass, ms (default `serverQueueMs`,
   * which then prices the prefill pass's entries only): a split's decode step arrives from the
   * network at any time and waits for the call under way, where the server's own decode loop
   * submits each step as the previous one ends.
   */
  readonly serverDecodeQueueMs?: number;
  /**
   * The queue wait of each token the server decodes itself (an all-server plan with server-side
   * decoding), ms (default `serverDecodeQueueMs`).
   */
  readonly serverStreamedQueueMs?: number;
  /** Time step of `dp-grid` (only usable when just `e2eMs` is stated), ms. */
  readonly resolutionMs?: number;
  /**
   * The device's token ids and text never leave it (default false): the first stage (the
   * embedding, token ids in) and the last (the head, tokens out) run on the client in every
   * pass, so only hidden states cross. Every solver honours it; no plan is all-server then.
   */
  readonly private?: boolean;
}

/**
 * Exact figures of one placement of a generation ({@link evaluateGeneration}).
 * Invariant: `e2eMs === ttftMs + decodeSteps · tpotMs` (computed so); `tpotMs` is 0 when
 * there are no decode passes.
 */
export interface GenerationCost {
  /** The prefill pass: compute where each stage runs, every crossing, the first token's download. */
  readonly ttftMs: number;
  /** One decode pass (0 when `decodeSteps` is 0). */
  readonly tpotMs: number;
  /** TTFT + m · TPOT. */
  readonly e2eMs: number;
  /** Σ server stages' (prefill + m · decode) work + `serverEntryWork` per entry per pass. */
  readonly serverWork: number;
  /** Transfers of one pass, as the contract counts them (all-server 2, all-client 0). */
  readonly switches: number;
  /** Whether the plan is priced as server-side decoding (all-server with `serverDecoding`). */
  readonly serverDecoding: boolean;
}

/** Per stated SLO, whether the plan meets it; objectives not stated are absent. */
export type SloMet = { readonly [K in SloKey]?: boolean };

/**
 * The answer of a generation solver: the contract's answer fields (`latencyMs` is the E2E
 * latency) plus TTFT, TPOT, E2E and which SLOs are met.
 * Invariants: figures are exactly {@link evaluateGeneration} of `placement`; `feasible` is
 * true iff every stated SLO is met; `latencyMs === e2eMs`.
 */
export interface GenerationResult extends GenerationCost {
  readonly algorithm: Algorithm;
  readonly feasible: boolean;
  readonly placement: Location[];
  /** The E2E latency, under the contract's name. */
  readonly latencyMs: number;
  readonly met: SloMet;
}

/**
 * Per stage, whether it must run on the client: with `private`, the first and the last stage
 * ({@link GenerationInstance.private}); nothing otherwise. O(S).
 */
export function pinnedToClient(instance: GenerationInstance): boolean[] {
  const S = instance.stages.length;
  return instance.stages.map((_, i) => instance.private === true && (i === 0 || i === S - 1));
}

/** `placement` with every stage pinned to the client ({@link pinnedToClient}) moved there. O(S). */
export function honourPins(instance: GenerationInstance, placement: readonly Location[]): Location[] {
  const pinned = pinnedToClient(instance);
  return placement.map((l, i) => (pinned[i] ? 'client' : l));
}

/** Every stage on the server that may run there (all of them unless the instance is private). O(S). */
export function serverWherever(instance: GenerationInstance): Location[] {
  return honourPins(
    instance,
    instance.stages.map((): Location => 'server'),
  );
}

/** Server work of `stage` for a whole generation of `m` decode passes. O(1). */
function stageWork(stage: GenerationStage, m: number): number {
  return (stage.serverPrefillWork ?? stage.serverPrefillMs) + m * (stage.serverDecodeWork ?? stage.serverDecodeMs);
}

/** Whether `placement` is all-server and the instance prices that as server-side decoding. O(S). */
/**
 * The queue waits `instance` prices, ms: each entry to the server in the prefill pass, each in a
 * decode pass, and each token the server decodes itself (see {@link GenerationInstance}'s
 * fields, with their defaults). O(1).
 */
export function queueWaits(instance: GenerationInstance): { readonly prefill: number; readonly decode: number; readonly streamed: number } {
  const prefill = instance.serverQueueMs ?? 0;
  const decode = instance.serverDecodeQueueMs ?? prefill;
  return { prefill, decode, streamed: instance.serverStreamedQueueMs ?? decode };
}

export function isServerDecodingPlacement(instance: GenerationInstance, placement: Placement): boolean {
  return (instance.serverDecoding ?? true) && placement.length > 0 && placement.every((l) => l === 'server');
}

/**
 * Exact TTFT, TPOT, E2E, server work and transfers of `placement` on `instance`.
 * A split (or stepped) placement: each pass sums, left to right, a crossing wherever stage i
 * runs elsewhere than stage i-1 (stage -1 is the client) — `latencyMs + tokens ·
 * inBytesPerToken / bytesPerMs` with n tokens in the prefill and 1 in a decode pass — then the
 * stage's compute where it runs, and when the last stage runs on the server the download of
 * `outBytesPerPass`; every entry to the server also waits its pass's queue ({@link queueWaits}). Server work: Σ
 * server stages' (prefill + m · decode) work, plus `serverEntryWork` per entry to the server
 * per pass (m + 1 passes).
 * The all-server placement with `serverDecoding`: TTFT = up(n tokens) + prefill queue + Σ
 * serverPrefillMs + down(one token); TPOT = streamed queue + Σ serverDecodeMs; the entry work is
 * charged once. With `serverWholeModel` its figures replace the sums (compute and work).
 * In both cases E2E = TTFT + m · TPOT: for a split plan this equals the contract instance
 * {@link generationAsContractInstance} prices, which `instanceFromMeasured` builds.
 * @throws RangeError when the placement's length differs from the stages or an entry is not a side.
 * Complexity: O(S).
 */
export function evaluateGeneration(instance: GenerationInstance, placement: Placement): GenerationCost {
  const { stages, uplink, downlink } = instance;
  if (placement.length !== stages.length) {
    throw new RangeError(`placement has ${placement.length} entries, the instance has ${stages.length} stages`);
  }
  const n = instance.promptTokens;
  const m = instance.decodeSteps;
  const entryPass = (instance.serverEntryWork ?? 0) * (m + 1);
  const queue = queueWaits(instance);
  let ttftMs = 0;
  let tpotMs = 0;
  let serverWork = 0;
  let switches = 0;
  let prev: Location = 'client';
  for (let i = 0; i < stages.length; i++) {
    const here = placement[i];
    const s = stages[i];
    if (here !== prev) {
      if (here !== 'server' && here !== 'client') throw new RangeError(`placement[${i}] must be 'client' or 'server', given ${JSON.stringify(here)}`);
      const link = here === 'server' ? uplink : downlink;
      ttftMs += transferMs(link, n * s.inBytesPerToken);
      tpotMs += transferMs(link, s.inBytesPerToken);
      if (here === 'server') {
        serverWork += entryPass;
        ttftMs += queue.prefill;
        tpotMs += queue.decode;
      }
      switches++;
    }
    if (here === 'server') {
      ttftMs += s.serverPrefillMs;
      tpotMs += s.serverDecodeMs;
      serverWork += stageWork(s, m);
    } else {
      ttftMs += s.clientPrefillMs;
      tpotMs += s.clientDecodeMs;
    }
    prev = here;
  }
  if (prev === 'server') {
    const down = transferMs(downlink, instance.outBytesPerPass);
    ttftMs += down;
    tpotMs += down;
    switches++;
  }
  const serverDecoding = isServerDecodingPlacement(instance, placement);
  if (serverDecoding) {
    // Decode passes stay on the server: no crossings, one entry for the whole generation; each
    // decoded token is one step in the server's queue.
    const whole = instance.serverWholeModel;
    tpotMs = queue.streamed;
    serverWork = instance.serverEntryWork ?? 0;
    if (whole) {
      ttftMs = transferMs(uplink, n * stages[0].inBytesPerToken) + queue.prefill + whole.serverPrefillMs + transferMs(downlink, instance.outBytesPerPass);
      tpotMs += whole.serverDecodeMs;
      serverWork += (whole.serverPrefillWork ?? whole.serverPrefillMs) + m * (whole.serverDecodeWork ?? whole.serverDecodeMs);
    } else {
      for (const s of stages) {
        tpotMs += s.serverDecodeMs;
        serverWork += stageWork(s, m);
      }
    }
  }
  if (m === 0) tpotMs = 0;
  return { ttftMs, tpotMs, e2eMs: ttftMs + m * tpotMs, serverWork, switches, serverDecoding };
}

/** The stated objectives of `slo`, in {@link SLO_KEYS} order. O(1). */
export function statedSlos(slo: Slo): SloKey[] {
  return SLO_KEYS.filter((k) => slo[k] !== undefined);
}

/** Per stated SLO whether `cost` meets it (within 1e-9 relative), and whether it meets all. O(1). */
export function sloCheck(slo: Slo, cost: Pick<GenerationCost, SloKey>): { met: SloMet; feasible: boolean } {
  const met: { [K in SloKey]?: boolean } = {};
  let feasible = true;
  for (const k of SLO_KEYS) {
    const bound = slo[k];
    if (bound === undefined) continue;
    met[k] = approxLessOrEqual(cost[k], bound);
    feasible &&= met[k];
  }
  return { met, feasible };
}

/**
 * The largest ratio latency / SLO over the stated objectives: <= 1 (within tolerance) iff
 * the plan is feasible. It is what an infeasible instance's answer minimises. O(1).
 */
export function sloRatio(slo: Slo, cost: Pick<GenerationCost, SloKey>): number {
  let r = 0;
  for (const k of SLO_KEYS) {
    const bound = slo[k];
    if (bound !== undefined) r = Math.max(r, cost[k] / bound);
  }
  return r;
}

/**
 * Builds the answer for `placement`, figures re-evaluated exactly, so every solver reports
 * what its placement costs. O(S).
 */
export function generationResultOf(instance: GenerationInstance, algorithm: Algorithm, placement: Location[]): GenerationResult {
  const cost = evaluateGeneration(instance, placement);
  const { met, feasible } = sloCheck(instance.slo, cost);
  return {
    algorithm,
    feasible,
    placement,
    serverWork: cost.serverWork,
    latencyMs: cost.e2eMs,
    switches: cost.switches,
    ttftMs: cost.ttftMs,
    tpotMs: cost.tpotMs,
    e2eMs: cost.e2eMs,
    met,
    serverDecoding: cost.serverDecoding,
  };
}

/** What {@link betterGeneration} compares of an answer. */
export type ComparableResult = Pick<GenerationResult, 'feasible' | 'serverWork' | SloKey>;

/**
 * Whether answer `a` is better than `b` for `instance`: a feasible answer beats an infeasible
 * one; among feasible ones the least server work, then the lower E2E; among infeasible ones
 * the least {@link sloRatio}, then the least work, then the lower E2E. Figures within 1e-9
 * relative count as equal. O(1).
 */
export function betterGeneration(slo: Slo, a: ComparableResult, b: ComparableResult): boolean {
  if (a.feasible !== b.feasible) return a.feasible;
  if (!a.feasible) {
    const ra = sloRatio(slo, a);
    const rb = sloRatio(slo, b);
    if (!approxEqual(ra, rb)) return ra < rb;
  }
  if (!approxEqual(a.serverWork, b.serverWork)) return a.serverWork < b.serverWork;
  return a.e2eMs < b.e2eMs && !approxEqual(a.e2eMs, b.e2eMs);
}

/**
 * The contract instance (CONTRACT §3) pricing the same generation for end-to-end latency, as
 * `instanceFromMeasured` builds it: clientMs = clientPrefillMs + m · clientDecodeMs,
 * serverMs likewise, serverWork = prefill + m · decode work; inBytes = (n + m) ·
 * inBytesPerToken; outBytes = (m + 1) · outBytesPerPass; link latencies × (m + 1), the
 * uplink's with the queue waits added (every entry to the server waits its pass's: the
 * prefill's once, a decode pass's m times);
 * serverEntryWork × (m + 1); slaMs = `slo.e2eMs`. It prices every placement stepped,
 * including all-server (no server-side decoding).
 * @throws RangeError when `slo.e2eMs` is not stated.
 * Complexity: O(S).
 */
export function generationAsContractInstance(instance: GenerationInstance): PlacementInstance {
  const e2e = instance.slo.e2eMs;
  if (e2e === undefined) throw new RangeError('slo.e2eMs must be stated to map a generation onto a contract instance, given nothing (missing)');
  const n = instance.promptTokens;
  const m = instance.decodeSteps;
  const passes = m + 1;
  const stages: Stage[] = instance.stages.map((s) => ({
    name: s.name,
    clientMs: s.clientPrefillMs + m * s.clientDecodeMs,
    serverMs: s.serverPrefillMs + m * s.serverDecodeMs,
    serverWork: stageWork(s, m),
    inBytes: (n + m) * s.inBytesPerToken,
  }));
  const entry = instance.serverEntryWork ?? 0;
  const queue = queueWaits(instance);
  const out: { -readonly [K in keyof PlacementInstance]: PlacementInstance[K] } = {
    stages,
    outBytes: passes * instance.outBytesPerPass,
    uplink: { latencyMs: instance.uplink.latencyMs * passes + queue.prefill + m * queue.decode, bytesPerMs: instance.uplink.bytesPerMs },
    downlink: { latencyMs: instance.downlink.latencyMs * passes, bytesPerMs: instance.downlink.bytesPerMs },
    slaMs: e2e,
  };
  if (entry > 0) out.serverEntryWork = passes * entry;
  if (instance.resolutionMs !== undefined) out.resolutionMs = instance.resolutionMs;
  return out;
}
