/**
 * Extension of the generation problem: prefill and decode placed apart. Each stage has a side
 * for the prefill pass and a side for the decode passes. A stage that holds no per-token state
 * (embedding, MLP, head: `kvBytesPerToken` 0) may change side between the phases for free; an
 * attention stage whose decode side differs from its prefill side has its prompt's KV cache
 * moved across the link once, between the phases. The contract's problem, the generation
 * problem and their answers are unchanged.
 */
import { transferMs } from './evaluate';
import { evaluateGeneration, queueWaits, type GenerationCost, type GenerationInstance, type GenerationResult, sloCheck } from './generation';
import type { Location, Placement } from './types';

/**
 * The server's own work of handing a KV cache over between the phases (its CPU decoding,
 * copying and encoding the cache, and the first touch of the memory it lands in), besides the
 * entry it counts as (`serverEntryWork`). Every figure >= 0, each defaulting to 0: without it
 * a hand-over costs the server only its entries.
 */
export interface KvHandoverCost {
  /** Server work per hand-over message received (a kv_put chunk, a kv_take request), ms. */
  readonly msPerMessageIn?: number;
  /** Server work per hand-over message sent (a kv_chunk), ms. */
  readonly msPerMessageOut?: number;
  /** Server work per KiB of KV cache taken in (device prefill, server decode), ms. */
  readonly msPerKibIn?: number;
  /** Server work per KiB of KV cache sent out (server prefill, device decode), ms. */
  readonly msPerKibOut?: number;
  /**
   * Most keys-plus-values bytes per message, bytes: a stage's cache travels in chunks of
   * whole positions, max(1, ⌊chunkBytes / kvBytesPerToken⌋) each, as the executor cuts it
   * (0 or absent: one message per stage).
   */
  readonly chunkBytes?: number;
}

/** A generation instance that may price the server's KV hand-over work (the phased problem's input). */
export interface HandoverInstance extends GenerationInstance {
  /** Server work of a hand-over (default: none beyond its entries). */
  readonly kvHandover?: KvHandoverCost;
  /**
   * Server work of one entry to the server in the prefill pass, ms, when a plan's phases
   * differ (default `serverEntryWork`). `serverEntryWork` stays the mean entry over the
   * generation's m + 1 passes; an entry of the prefill carries the prompt's n hidden states in
   * and out, one of a decode pass a single token's, so the prefill's entry costs more. Its
   * decode entries then cost the rest of that mean, ((m + 1) · serverEntryWork − this) / m
   * ({@link phaseEntryWork}), which prices a plan whose phases agree as the generation
   * problem does. 0 ≤ this ≤ (m + 1) · serverEntryWork.
   */
  readonly serverPrefillEntryWork?: number;
}

/**
 * The server work of one entry in the prefill pass and in a decode pass
 * (`serverPrefillEntryWork`, and the rest of the mean `serverEntryWork` over the m decode
 * passes); both `serverEntryWork` when the instance does not set it or has no decode pass. A
 * prefill figure above (m + 1) · serverEntryWork is taken as that bound (decode entries 0). O(1).
 */
export function phaseEntryWork(instance: HandoverInstance): { readonly prefill: number; readonly decode: number } {
  const mean = instance.serverEntryWork ?? 0;
  const m = instance.decodeSteps;
  if (instance.serverPrefillEntryWork === undefined || m === 0) return { prefill: mean, decode: mean };
  const prefill = Math.min(Math.max(0, instance.serverPrefillEntryWork), (m + 1) * mean);
  return { prefill, decode: Math.max(0, ((m + 1) * mean - prefill) / m) };
}

/** A generation instance marked `"phased": true`: solved by `dp-phased` with a placement per phase. */
export interface PhasedInstance extends HandoverInstance {
  readonly phased: true;
}

/**
 * Server work of handing stage `s`'s cache of `n` positions over, `up` (device to server) or
 * down: its messages (chunks of whole positions; a take also sends one request in) and its KiB.
 * 0 for a stage without a KV cache. O(1).
 */
export function handoverWork(cost: KvHandoverCost | undefined, kvBytesPerToken: number, n: number, up: boolean): number {
  if (!cost || kvBytesPerToken <= 0) return 0;
  const chunk = cost.chunkBytes ?? 0;
  const messages = chunk > 0 ? Math.ceil(n / Math.max(1, Math.floor(chunk / kvBytesPerToken))) : 1;
  const kib = (kvBytesPerToken * n) / 1024;
  return up
    ? messages * (cost.msPerMessageIn ?? 0) + kib * (cost.msPerKibIn ?? 0)
    : (cost.msPerMessageIn ?? 0) + messages * (cost.msPerMessageOut ?? 0) + kib * (cost.msPerKibOut ?? 0);
}

/**
 * Exact figures of a pair of placements ({@link evaluatePhased}). Beside the generation's:
 * the hand-over between the phases. Invariant: `e2eMs === ttftMs + decodeSteps · tpotMs`.
 */
export interface PhasedCost extends GenerationCost {
  /** Time between the first token and the first decode pass spent moving KV caches (0 when nothing moves). */
  readonly handoverMs: number;
  /** KV-cache bytes moved up (client to server) between the phases. */
  readonly kvUpBytes: number;
  /** KV-cache bytes moved down (server to client) between the phases. */
  readonly kvDownBytes: number;
  /** Server work of the hand-over itself ({@link KvHandoverCost}; entries not included), part of `serverWork`. */
  readonly handoverWork: number;
}

/** The name of the phased solver (beside the contract's {@link Algorithm}s). */
export const PHASED_ALGORITHM = 'dp-phased';

/**
 * The answer of a phased solve: the generation answer's fields with `placement` the decode
 * placement (the one every decode pass crosses with; `switches` counts its transfers), plus
 * both placements and the hand-over. Figures are exactly {@link evaluatePhased}'s.
 */
export interface PhasedResult extends Omit<GenerationResult, 'algorithm'>, PhasedCost {
  readonly algorithm: GenerationResult['algorithm'] | typeof PHASED_ALGORITHM;
  readonly prefillPlacement: Location[];
  readonly decodePlacement: Location[];
}

/** Per-pass figures of one placement run stage by stage. */
interface PassCost {
  readonly ms: number;
  /** Server work of the stages that run on the server, for one pass of this phase. */
  readonly work: number;
  /** Entries to the server in one pass. */
  readonly entries: number;
  readonly switches: number;
}

function checkPlacement(instance: GenerationInstance, placement: Placement, name: string): void {
  if (placement.length !== instance.stages.length) {
    throw new RangeError(`${name} has ${placement.length} entries, the instance has ${instance.stages.length} stages`);
  }
  placement.forEach((l, i) => {
    if (l !== 'client' && l !== 'server') throw new RangeError(`${name}[${i}] must be 'client' or 'server', given ${JSON.stringify(l)}`);
  });
}

/** One pass of `phase` run stage by stage with `placement`, crossings and queue waits included. O(S). */
function stepPass(instance: GenerationInstance, placement: Placement, phase: 'prefill' | 'decode'): PassCost {
  const tokens = phase === 'prefill' ? instance.promptTokens : 1;
  const queue = queueWaits(instance)[phase];
  let ms = 0;
  let work = 0;
  let entries = 0;
  let switches = 0;
  let prev: Location = 'client';
  for (let i = 0; i < instance.stages.length; i++) {
    const s = instance.stages[i];
    const here = placement[i];
    if (here !== prev) {
      ms += transferMs(here === 'server' ? instance.uplink : instance.downlink, tokens * s.inBytesPerToken);
      if (here === 'server') {
        ms += queue;
        entries++;
      }
      switches++;
    }
    if (here === 'server') {
      ms += phase === 'prefill' ? s.serverPrefillMs : s.serverDecodeMs;
      work += phase === 'prefill' ? (s.serverPrefillWork ?? s.serverPrefillMs) : (s.serverDecodeWork ?? s.serverDecodeMs);
    } else {
      ms += phase === 'prefill' ? s.clientPrefillMs : s.clientDecodeMs;
    }
    prev = here;
  }
  if (prev === 'server') {
    ms += transferMs(instance.downlink, instance.outBytesPerPass);
    switches++;
  }
  return { ms, work, entries, switches };
}

/**
 * The server's own decode loop (server-side decoding of an all-server decode placement): one
 * decode pass is a queue wait and the whole model's decode compute, crossing nothing.
 * Returns the pass time and its work. O(S).
 */
export function streamedDecode(instance: GenerationInstance): { readonly ms: number; readonly work: number } {
  const queue = queueWaits(instance).streamed;
  const whole = instance.serverWholeModel;
  if (whole) return { ms: queue + whole.serverDecodeMs, work: whole.serverDecodeWork ?? whole.serverDecodeMs };
  let ms = queue;
  let work = 0;
  for (const s of instance.stages) {
    ms += s.serverDecodeMs;
    work += s.serverDecodeWork ?? s.serverDecodeMs;
  }
  return { ms, work };
}

/**
 * Exact TTFT, TPOT, E2E, server work and hand-over of running the prefill pass with
 * `prefill` and every decode pass with `decode`.
 *
 * - The prefill pass is priced as a generation's split pass (crossings of n tokens, queue
 *   waits, the first token's download when the last stage runs on the server). When both
 *   placements are equal, or there is no decode pass, the figures are exactly
 *   {@link evaluateGeneration}'s of `prefill` (the whole-model figures of an all-server plan
 *   included) and nothing is handed over.
 * - Each decode pass is priced as a split pass of one token, or, when `decode` is all-server
 *   and the instance allows server-side decoding, as the server's own loop
 *   ({@link streamedDecode}).
 * - Between the phases, each stage with `kvBytesPerToken` > 0 whose sides differ moves
 *   `kvBytesPerToken · n` bytes in that direction; all bytes going one way travel as one
 *   transfer (`latencyMs + bytes / bytesPerMs`) and waits behind the server's work once, as a
 *   decode entry does (`serverDecodeQueueMs`: the executor makes a run of kv_put or kv_take
 *   engine calls together), and the two directions add. When the server's loop decodes after
 *   any prefill, the last token goes up with them
 *   (`stages[0].inBytesPerToken` bytes; the client sends it to start the loop even when nothing
 *   else moves up), and the loop's first token comes down (`outBytesPerPass`): the stream starts
 *   once more, so its latency each way is the hand-over's. Each direction used is one more entry to the server
 *   (a decode entry's work, {@link phaseEntryWork}), and each stage moved costs the server its hand-over work
 *   ({@link KvHandoverCost}, {@link handoverWork}: messages and KiB, in or out), which is
 *   also time of the hand-over: the server decodes, copies or encodes the cache while the
 *   decode waits for it (`handoverMs` = the transfers + that work).
 * - TPOT is the mean time per output token after the first, as serving systems measure it:
 *   one decode pass plus the hand-over spread over the m passes; E2E = TTFT + m · TPOT.
 * - Server work: the prefill's server stages and entries once, the decode's m times, each
 *   entry at its phase's figure ({@link phaseEntryWork}).
 * @throws RangeError when a placement's length differs from the stages or an entry is not a side.
 * Complexity: O(S).
 */
export function evaluatePhased(instance: HandoverInstance, prefill: Placement, decode: Placement): PhasedCost {
  checkPlacement(instance, prefill, 'prefillPlacement');
  checkPlacement(instance, decode, 'decodePlacement');
  const m = instance.decodeSteps;
  const same = prefill.every((l, i) => l === decode[i]);
  if (m === 0 || same) return { ...evaluateGeneration(instance, prefill), handoverMs: 0, kvUpBytes: 0, kvDownBytes: 0, handoverWork: 0 };
  const { stages, uplink, downlink } = instance;
  const n = instance.promptTokens;
  const entry = phaseEntryWork(instance);
  const pre = stepPass(instance, prefill, 'prefill');
  let serverWork = pre.work + entry.prefill * pre.entries;
  const streamed = (instance.serverDecoding ?? true) && decode.every((l) => l === 'server');
  const steppedDecode = stepPass(instance, decode, 'decode');
  let pass: number;
  if (streamed) {
    const loop = streamedDecode(instance);
    pass = loop.ms;
    serverWork += m * loop.work;
  } else {
    pass = steppedDecode.ms;
    serverWork += m * (steppedDecode.work + entry.decode * steppedDecode.entries);
  }
  let kvUpBytes = 0;
  let kvDownBytes = 0;
  let handoverWorkSum = 0;
  stages.forEach((s, i) => {
    const kv = (s.kvBytesPerToken ?? 0) * n;
    if (kv <= 0 || prefill[i] === decode[i]) return;
    if (prefill[i] === 'client') kvUpBytes += kv;
    else kvDownBytes += kv;
    handoverWorkSum += handoverWork(instance.kvHandover, s.kvBytesPerToken ?? 0, n, prefill[i] === 'client');
  });
  // The server's loop starts from a message of the client's (the last token, behind any cache it
  // sends up), and its first token comes down: one crossing each way, whatever ran the prefill.
  const up = kvUpBytes > 0 || streamed;
  const down = kvDownBytes > 0;
  // The server's hand-over work is on the way too: the decode cannot go on before the cache is in (or out).
  // Each direction's engine calls are made together and wait behind the server's work once, as a decode entry does.
  const wait = queueWaits(instance).decode;
  const handoverMs =
    (up ? transferMs(uplink, kvUpBytes + (streamed ? stages[0].inBytesPerToken : 0)) + wait : 0) +
    (down ? transferMs(downlink, kvDownBytes) + wait : 0) +
    (streamed ? transferMs(downlink, instance.outBytesPerPass) : 0) +
    handoverWorkSum;
  serverWork += entry.decode * ((up ? 1 : 0) + (down ? 1 : 0)) + handoverWorkSum;
  const tpotMs = pass + handoverMs / m;
  return {
    ttftMs: pre.ms,
    tpotMs,
    e2eMs: pre.ms + m * tpotMs,
    serverWork,
    switches: steppedDecode.switches,
    serverDecoding: streamed,
    handoverMs,
    kvUpBytes,
    kvDownBytes,
    handoverWork: handoverWorkSum,
  };
}

/** The answer for a pair of placements, figures re-evaluated exactly. O(S). */
export function phasedResultOf(instance: HandoverInstance, algorithm: PhasedResult['algorithm'], prefill: Location[], decode: Location[]): PhasedResult {
  const cost = evaluatePhased(instance, prefill, decode);
  const { met, feasible } = sloCheck(instance.slo, cost);
  // Without decode passes the decode placement takes no part: report the prefill's.
  const decodePlacement = instance.decodeSteps === 0 ? [...prefill] : decode;
  return {
    ...cost,
    algorithm,
    feasible,
    met,
    placement: decodePlacement,
    latencyMs: cost.e2eMs,
    prefillPlacement: prefill,
    decodePlacement,
  };
}
