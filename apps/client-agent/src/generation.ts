import { isPlacementLetters } from '@tandem/dp';
import { status } from '@grpc/grpc-js';
import { greedyToken, lastPosition } from '@tandem/model';
import type { HostTensor } from '@tandem/protocol';
import { sleep } from '@tandem/util';
import { ExecutorStatusError } from './errors';
import type { LinkEmulator, LinkEstimator } from './link';
import type { KvCache } from '@tandem/model';
import type { LocalStages } from './local-stages';
import { GenerateRefusedError, REFUSAL_MARGIN_MS, refusalHintOf, TOKEN_DOWN_BYTES, type RemoteSession } from './remote-session';

/** A maximal run of consecutive stages on one side: stages [begin, end). */
export interface Segment {
  readonly side: 'C' | 'S';
  readonly begin: number;
  readonly end: number;
}

/** Cuts a placement string ('C'/'S' per stage) into its runs. */
export function segmentsOf(placement: string): Segment[] {
  const out: Segment[] = [];
  for (let i = 0; i < placement.length; i++) {
    const side = placement[i] as 'C' | 'S';
    const last = out[out.length - 1];
    if (last && last.side === side) out[out.length - 1] = { ...last, end: i + 1 };
    else out.push({ side, begin: i, end: i + 1 });
  }
  return out;
}

export interface GenerationDeps {
  readonly local: LocalStages;
  /** Opens the server session lazily (only placements with an 'S' need one). */
  readonly openRemote: () => Promise<RemoteSession>;
  readonly emulator: LinkEmulator;
  readonly estimator: LinkEstimator;
  readonly vocabSize: number;
  readonly signal: AbortSignal;
  /**
   * Resuming a generation whose executor session was lost (UNAVAILABLE: the executor died,
   * restarted or drained). Absent: a lost session fails the generation.
   */
  readonly resume?: ResumeOptions;
}

/** How a generation that lost its executor session is resumed on a new one. */
export interface ResumeOptions {
  /**
   * When the generation must have ended (Date.now() ms; the caller's deadline or the agent's
   * own, whichever is earlier). No attempt starts unless it leaves {@link RESUME_MARGIN_MS}
   * before it: the generation then ends with UNAVAILABLE while its caller still listens.
   */
  readonly deadline: number;
  /** First wait before reopening, ms (default 50); doubles per failed attempt up to maxBackoffMs. */
  readonly initialBackoffMs?: number;
  /** Longest wait between attempts, ms (default 1000). */
  readonly maxBackoffMs?: number;
  /** Called each time the generation continues on a new session (for logs). */
  readonly onResumed?: (info: { tokens: number; attempts: number; lostMs: number }) => void;
}

/** Time left before the deadline at which resuming gives up, so the UNAVAILABLE reaches the caller in time, ms. */
export const RESUME_MARGIN_MS = 100;

/**
 * The generation lost its executor session and could not continue on a new one within its
 * deadline. Carries gRPC's UNAVAILABLE like the executor's own errors, so the agent passes it through.
 */
export class ExecutorLostError extends ExecutorStatusError {
  override name = 'ExecutorLostError';
  constructor(details: string) {
    super(status.UNAVAILABLE, details);
  }
}

/**
 * Whether `err` means the session (not the request) is gone: the executor is unreachable,
 * died, restarted or drained (UNAVAILABLE), or ended the stream without a status.
 */
export function isSessionLost(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | undefined;
  return e?.code === status.UNAVAILABLE || (err instanceof Error && e?.code === undefined && err.message === 'the executor ended the session');
}

/** The retry state of one generation: how many sessions it lost, and the backoff before the next attempt. */
class Resumer {
  /** Sessions replaced after a loss (each counted when the new one opened). */
  resumes = 0;
  private attempts = 0;
  private lostAt = 0;
  private lost = false;

  constructor(
    private readonly opts: ResumeOptions | undefined,
    private readonly signal: AbortSignal,
  ) {}

  /**
   * After `err` ended the session at `tokens` tokens: rethrows it when it is not a lost
   * session (or resuming is off, or the generation was aborted); otherwise waits out the
   * backoff, or throws ExecutorLostError when the deadline leaves no room for another attempt.
   */
  async afterFailure(err: unknown, tokens: number): Promise<void> {
    const o = this.opts;
    if (!o || this.signal.aborted || !isSessionLost(err)) throw err;
    if (!this.lost) {
      this.lost = true;
      this.lostAt = performance.now();
    }
    const delay = Math.min(o.maxBackoffMs ?? 1000, (o.initialBackoffMs ?? 50) * 2 ** this.attempts);
    this.attempts++;
    const left = o.deadline - Date.now();
    if (left < delay + RESUME_MARGIN_MS) {
      const e = err as { details?: string; message?: string };
      throw new ExecutorLostError(
        `the executor session was lost after ${tokens} generated tokens and could not be resumed within the deadline ` +
          `(${this.attempts} attempts over ${Math.round(performance.now() - this.lostAt)} ms, ${Math.max(0, Math.round(left))} ms left); last error: ${e.details ?? e.message ?? String(err)}`,
      );
    }
    await sleep(delay, this.signal);
  }

  /** A session opened: when it replaces a lost one, counts the resume. */
  opened(tokens: number): void {
    if (!this.lost) return;
    this.resumes++;
    this.opts?.onResumed?.({ tokens, attempts: this.attempts, lostMs: performance.now() - this.lostAt });
    this.lost = false;
    this.attempts = 0;
  }
}

export interface GenerationStats {
  readonly ids: number[];
  readonly ttftMs: number;
  readonly totalMs: number;
  readonly serverComputeMs: number;
  /** Time the server's steps waited for its engine, summed, ms. */
  readonly serverQueueMs: number;
  readonly clientComputeMs: number;
  /** Times the generation lost its executor session and continued on a new one. */
  readonly resumes: number;
  /**
   * Times the executor refused work of the generation with a retry hint (the client's tokens
   * per second: a split step, or a server-side generation at its start) and it was sent again after the hint.
   */
  readonly refusals: number;
  /**
   * A phased plan: time spent moving stage states between the prefill and the decode (from
   * the first token until every moved stage is on its decode side, emulated link delays
   * included), ms; 0 when nothing moved.
   */
  readonly handoverMs: number;
  /** Key and value bytes handed to the executor (kv_put) between the phases. */
  readonly kvUpBytes: number;
  /** Key and value bytes taken from the executor (kv_take) between the phases. */
  readonly kvDownBytes: number;
}

const bytesOf = (t: HostTensor): number => t.data.byteLength;
const idsTensor = (ids: readonly number[]): HostTensor => ({ dtype: 'int64', shape: [1, ids.length], data: BigInt64Array.from(ids, (v) => BigInt(v)) });
/** Bytes a kv_take request is counted as on the uplink (emulation). */
const KV_TAKE_UP_BYTES = 16;

/** One generation's state, shared by its phases. */
class Run {
  readonly t0 = performance.now();
  readonly resumer: Resumer;
  remote: RemoteSession | undefined;
  /** Tokens delivered to the caller. */
  readonly ids: number[] = [];
  ttftMs = 0;
  serverComputeMs = 0;
  serverQueueMs = 0;
  clientComputeMs = 0;
  /** Refusals of the sessions this generation lost or ended (the current one counts its own). */
  refusals = 0;
  handoverMs = 0;
  kvUpBytes = 0;
  kvDownBytes = 0;
  /**
   * KV caches put to the server and not timed yet: a put has no answer, so the next message's
   * answer times it (the stream is ordered: that answer cannot come before the puts arrived).
   */
  private untimedUp: { readonly bytes: number; readonly since: number } | undefined;

  constructor(
    readonly deps: GenerationDeps,
    readonly promptIds: readonly number[],
    readonly maxNewTokens: number,
    readonly onToken: (id: number, index: number) => void,
  ) {
    this.resumer = new Resumer(deps.resume, deps.signal);
  }

  /** `bytes` went up at `since` with no answer of their own (see {@link Run.transferFrom}). */
  sentUntimed(bytes: number, since: number): void {
    this.untimedUp = { bytes: (this.untimedUp?.bytes ?? 0) + bytes, since: this.untimedUp?.since ?? since };
  }

  /**
   * Where the link estimate of a message sent now with `upBytes` starts: now and its own bytes,
   * or, after untimed puts, their start and their bytes added (taken once); `behindPuts` says
   * which (the message then goes right behind the puts on the stream).
   */
  transferFrom(upBytes: number): { readonly sent: number; readonly upBytes: number; readonly behindPuts: boolean } {
    const pending = this.untimedUp;
    this.untimedUp = undefined;
    return pending ? { sent: pending.since, upBytes: upBytes + pending.bytes, behindPuts: true } : { sent: performance.now(), upBytes, behindPuts: false };
  }

  /** Opens the session (a first one, or a new one after a loss, counted by the resumer). */
  async open(): Promise<RemoteSession> {
    const remote = await this.deps.openRemote();
    this.remote = remote;
    this.resumer.opened(this.ids.length);
    return remote;
  }

  /** Drops the current session (cancelled), keeping its refusals. */
  drop(): void {
    this.untimedUp = undefined; // what went up on the lost session is not timed by the next one
    if (!this.remote) return;
    this.refusals += this.remote.refusals;
    this.remote.cancel();
    this.remote = undefined;
  }

  /**
   * After `err` ended the session: rethrows unless it is a lost session that may be resumed
   * (see Resumer), then opens a new session, retried with backoff while the deadline allows.
   */
  async reopen(err: unknown): Promise<RemoteSession> {
    this.drop();
    for (;;) {
      await this.resumer.afterFailure(err, this.ids.length);
      try {
        return await this.open();
      } catch (openErr) {
        err = openErr;
      }
    }
  }

  deliver(next: number): void {
    if (this.ids.length === 0) this.ttftMs = performance.now() - this.t0;
    this.onToken(next, this.ids.length);
    this.ids.push(next);
  }

  stats(): GenerationStats {
    const { ids, ttftMs, serverComputeMs, serverQueueMs, clientComputeMs, handoverMs, kvUpBytes, kvDownBytes } = this;
    const refusals = this.refusals + (this.remote?.refusals ?? 0);
    return {
      ids,
      ttftMs,
      totalMs: performance.now() - this.t0,
      serverComputeMs,
      serverQueueMs,
      clientComputeMs,
      resumes: this.resumer.resumes,
      refusals,
      handoverMs,
      kvUpBytes,
      kvDownBytes,
    };
  }
}

/**
 * Greedy generation with the given placement: a prefill of the prompt, then one decode
 * step per further token. When every stage is on the server the executor decodes by itself
 * (see {@link generateOnServer}); otherwise client runs execute on `local` with this
 * generation's own KV cache and server runs go over one executor session (its cache on the
 * server), one step per crossing per token. `onToken` is called for each token as it is
 * produced. The session is ended (or cancelled, on abort or error) before this resolves.
 *
 * A phased plan (`decodePlacement` given and different from `placement`): the prefill runs
 * with `placement`; once its token is delivered, every stage that changes side moves its state
 * across the session stream (kv_take for server → client, kv_put for client → server,
 * count-only stages too; see {@link handOver}), and the decode runs with `decodePlacement`:
 * decoded by the executor when that is all-server, otherwise one step per crossing per token.
 * A generation of one token has no decode and moves nothing. Absent, empty or equal to
 * `placement`: exactly the single-placement generation.
 *
 * With `deps.resume`, a lost session (see {@link isSessionLost}) does not end the generation:
 * the local cache is cleared, a new session is opened (retried with backoff while the deadline
 * allows) and the prompt plus every token so far is prefilled again with the same placement,
 * whose token is the next one; the caller sees one stream, as from an undisturbed run. A phased
 * generation continues with its DECODE placement after a loss at any point (in the prefill,
 * the hand-over or the decode): the history is prefilled again with it on the new session and
 * nothing is handed over any more. That is the simplest correct rule (no state is left on a
 * dead session to move), at the price of a prefill with the decode's placement.
 */
export async function generate(
  deps: GenerationDeps,
  placement: string,
  promptIds: readonly number[],
  maxNewTokens: number,
  onToken: (id: number, index: number) => void,
  decodePlacement?: string,
): Promise<GenerationStats> {
  const decode = decodePlacement || placement;
  if (!isPlacementLetters(decode, placement.length))
    throw new Error(`decodePlacement must be ${placement.length} letters C or S like placement, given '${decode}'`);
  if (decode === placement && /^S+$/.test(placement)) return generateOnServer(deps, promptIds, maxNewTokens, onToken);
  // Created before the first await: with replay, the cache takes the cursor armed for this generation.
  const cache = deps.local.newCache();
  const run = new Run(deps, promptIds, maxNewTokens, onToken);
  try {
    return await driven(run, async () => {
      if (decode === placement) await splitLoop(run, cache, segmentsOf(placement), promptIds, false);
      else await phased(run, cache, placement, decode);
    });
  } finally {
    cache.clear();
  }
}

/**
 * Runs a generation's `body`: its session is cancelled when `deps.signal` aborts or the body
 * throws, and ended (half-closed) after it succeeds; returns the run's figures.
 */
async function driven(run: Run, body: () => Promise<void>): Promise<GenerationStats> {
  const onAbort = (): void => run.remote?.cancel();
  run.deps.signal.addEventListener('abort', onAbort);
  try {
    await body();
    run.remote?.end();
    return run.stats();
  } catch (err) {
    run.remote?.cancel();
    throw err;
  } finally {
    run.deps.signal.removeEventListener('abort', onAbort);
  }
}

/**
 * The phases of a phased generation: the prefill with `prefill` (split steps, also when it is
 * all-server: the executor then holds every stage's state, and a `generate` may continue
 * from it), the hand-over, the decode with `decode`. See {@link generate} for the rule after a
 * lost session.
 */
async function phased(run: Run, cache: KvCache, prefill: string, decode: string): Promise<void> {
  const decodeSegs = segmentsOf(decode);
  // The prefill; a lost session resumes it with the decode placement, and nothing is handed over then.
  const resumedIntoDecode = await splitLoop(run, cache, segmentsOf(prefill), run.promptIds, false, { until: 1, afterLoss: decodeSegs });
  if (run.ids.length >= run.maxNewTokens) return;
  /** Whether every stage's state is on its decode side. */
  let placed = resumedIntoDecode;
  if (!placed) {
    try {
      await handOver(run, cache, prefill, decode);
      placed = true;
    } catch (err) {
      if (!run.remote) throw err; // no session was lost (a first open failed, or a local error)
      // Lost during the hand-over: continue with the decode placement from the history on a new session.
      cache.clear();
      if (/S/.test(decode)) await run.reopen(err);
      else {
        run.drop();
        await run.resumer.afterFailure(err, run.ids.length);
      }
    }
  }
  const history = placed ? [run.ids[run.ids.length - 1]] : [...run.promptIds, ...run.ids];
  if (/^S+$/.test(decode)) {
    run.remote ??= await run.open();
    await serverLoop(run, run.remote, placed);
  } else {
    if (!/S/.test(decode) && run.remote) {
      // Every stage is on the device from here: the session holds nothing any more.
      run.refusals += run.remote.refusals;
      run.remote.end();
      run.remote = undefined;
    }
    await splitLoop(run, cache, decodeSegs, history, !placed);
  }
}

/**
 * Moves the state of every stage that changes side between `prefill` and `decode`, after the
 * prefill (every stage holds the prompt's N tokens): kv_take for a stage the server ran and the
 * device decodes (imported into the device's cache), kv_put for the reverse (exported from it,
 * then dropped there); count-only stages (embedding, MLP, head) move their count alone. The
 * takes go out together and are answered in order; the puts are not answered (a refusal ends the
 * session, and the decode's next message then fails with its status). Emulated link: one
 * uplink crossing for all puts' bytes, one uplink for the take requests and one downlink for
 * all the takes' bytes (chunks stream back to back); a generate that follows the puts goes right
 * behind them (its bytes alone, no second latency: serverLoop), while a split decode's first step
 * still pays its own crossing, as the plan prices it. The estimator records the takes' transfer,
 * and the puts' with the answer to the next message (they have none of their own). Opens the
 * session when the prefill had none.
 */
async function handOver(run: Run, cache: KvCache, prefill: string, decode: string): Promise<void> {
  const { deps } = run;
  const t0 = performance.now();
  const N = run.promptIds.length;
  const toServer: number[] = [];
  const toClient: number[] = [];
  for (let s = 0; s < prefill.length; s++) {
    if (prefill[s] === 'C' && decode[s] === 'S') toServer.push(s);
    else if (prefill[s] === 'S' && decode[s] === 'C') toClient.push(s);
  }
  if (toServer.length + toClient.length === 0) return;
  const remote = run.remote ?? (await run.open());
  const take = async (): Promise<void> => {
    if (toClient.length === 0) return;
    const sent = performance.now();
    await deps.emulator.uplink(KV_TAKE_UP_BYTES * toClient.length);
    deps.signal.throwIfAborted();
    const taken = await Promise.all(toClient.map((s) => remote.kvTake(s)));
    const bytes = taken.reduce((a, t) => a + t.bytes, 0);
    await deps.emulator.downlink(bytes);
    deps.estimator.recordTransfer(KV_TAKE_UP_BYTES * toClient.length, bytes, performance.now() - sent);
    run.kvDownBytes += bytes;
    for (const [i, s] of toClient.entries()) {
      const { state } = taken[i];
      if (state.tokens !== N) throw new Error(`the executor handed over ${state.tokens} tokens of stage ${s}, the prefill ran ${N}`);
      deps.local.importState(s, cache, state);
    }
  };
  const put = async (): Promise<void> => {
    if (toServer.length === 0) return;
    const states = toServer.map((s) => deps.local.exportState(s, cache, N));
    const bytes = states.reduce((a, st) => a + (st.key?.data.byteLength ?? 0) + (st.value?.data.byteLength ?? 0), 0);
    const since = performance.now();
    await deps.emulator.uplink(bytes);
    deps.signal.throwIfAborted();
    let sent = 0;
    for (const [i, s] of toServer.entries()) sent += remote.kvPut(s, states[i]);
    run.kvUpBytes += sent;
    run.sentUntimed(sent, since);
  };
  // Both run to their end before a failure is thrown: a take still under way must not import
  // into the cache after the caller cleared it to start again.
  const [took, put_] = await Promise.allSettled([take(), put()]);
  for (const r of [took, put_]) if (r.status === 'rejected') throw r.reason;
  run.handoverMs = performance.now() - t0;
}

/**
 * The split loop: one pass over `segs` per token (device stages on `local`, server runs as
 * one step each) until the generation has `until` tokens (default all of them), starting from
 * `tokens` (the prompt, or the last token when the caches hold the history; with `refill` the
 * caches are rebuilt first by a pass over the whole history). A lost session is replaced
 * (see Run.reopen) and the history prefilled again, with `afterLoss` from then on when given.
 * Resolves whether a loss switched it to `afterLoss`.
 */
async function splitLoop(
  run: Run,
  cache: KvCache,
  segs: Segment[],
  tokens: readonly number[],
  refill: boolean,
  opts: { until?: number; afterLoss?: Segment[] } = {},
): Promise<boolean> {
  const { deps } = run;
  const until = opts.until ?? run.maxNewTokens;
  let switched = false;
  while (run.ids.length < until) {
    deps.signal.throwIfAborted();
    if (refill) {
      // The lost session took the server's cache; the local one may hold part of the interrupted token.
      cache.clear();
      tokens = [...run.promptIds, ...run.ids];
      refill = false;
    }
    const last = segs[segs.length - 1].end;
    let x: HostTensor | number = idsTensor(tokens);
    try {
      for (const seg of segs) {
        if (typeof x === 'number') throw new Error('a token came back before the last stage');
        if (seg.side === 'C') {
          for (let s = seg.begin; s < seg.end; s++) {
            // Only the head answers with a token (a replayed one), and it is the last stage.
            if (typeof x === 'number') throw new Error('a token came back before the last stage');
            // Only the next token is needed: the (position-wise) head runs on the last position alone.
            if (s === last - 1 && x.dtype === 'float32') x = lastPosition(x);
            const r = await deps.local.run(s, x, cache);
            run.clientComputeMs += r.ms;
            x = r.output;
          }
        } else {
          const remote = run.remote ?? (await run.open());
          const input: HostTensor = x;
          const from = run.transferFrom(bytesOf(input));
          await deps.emulator.uplink(bytesOf(input));
          const r = await remote.step(seg.begin, seg.end, input, seg.end === last);
          await deps.emulator.downlink(r.downBytes);
          run.serverComputeMs += r.computeMs;
          run.serverQueueMs += r.queueMs;
          // Network time as the device sees it, emulated delays included; and what the step took beyond it.
          const outside = performance.now() - from.sent - r.queueMs;
          deps.estimator.recordTransfer(from.upBytes, r.downBytes, outside - r.computeMs);
          deps.estimator.recordStep(from.upBytes, r.downBytes, outside - r.serviceMs);
          x = r.output;
        }
      }
    } catch (err) {
      // Only a generation that had a session resumes: a first open that fails ends it at once.
      if (!run.remote) throw err;
      if (opts.afterLoss && !switched) {
        segs = opts.afterLoss;
        switched = true;
      }
      refill = true;
      if (segs.some((g) => g.side === 'S')) await run.reopen(err);
      else {
        // Every stage is on the device from here: no new session to open.
        run.drop();
        await run.resumer.afterFailure(err, run.ids.length);
      }
      continue;
    }
    const next: number = typeof x === 'number' ? x : greedyToken(x as { data: Float32Array }, deps.vocabSize);
    run.deliver(next);
    tokens = [next];
  }
  return switched;
}

/**
 * An all-server generation, decoded by the executor itself: the prompt crosses the uplink
 * once, then each token crosses the downlink as it is made. The emulated downlink delay of
 * each token starts when that token arrives, so the delays overlap (tokens are pipelined on
 * the link, as on a real one) instead of adding up; tokens are still delivered in order.
 * No round trip per token. Aborting `deps.signal` cancels the stream. With `deps.resume`, a
 * lost session is replaced by a new one that decodes on from the prompt plus every token
 * received so far (tokens still on the emulated link are delivered as they were). A
 * generation the executor refuses at its start with a retry hint (RESOURCE_EXHAUSTED with the
 * trailer `retry-after-ms`: the client's tokens per second) is sent again on a new session
 * after the hint while its session's deadline leaves room (as a refused split step is, see
 * RemoteSession.step); otherwise it ends at once with GenerateRefusedError (RESOURCE_EXHAUSTED,
 * the executor's message).
 */
async function generateOnServer(
  deps: GenerationDeps,
  promptIds: readonly number[],
  maxNewTokens: number,
  onToken: (id: number, index: number) => void,
): Promise<GenerationStats> {
  const run = new Run(deps, promptIds, maxNewTokens, onToken);
  return driven(run, async () => {
    deps.signal.throwIfAborted();
    const remote = await run.open();
    await serverLoop(run, remote, false);
  });
}

/**
 * The executor decodes the rest of the generation (see {@link generateOnServer}) on `first`:
 * from the whole history (the prompt and the tokens delivered so far), or with `handed` from
 * the state the session already holds (a phased plan's prefill handed over: only the last
 * token goes up). A new session after a loss or a refusal starts from the history.
 */
async function serverLoop(run: Run, first: RemoteSession, handed: boolean): Promise<void> {
  const { deps, promptIds, maxNewTokens } = run;
  /** Tokens the executor sent or the prefill made (some may still be on the emulated link). */
  const received: number[] = [...run.ids];
  /** Set once the generation failed or was aborted: tokens still on the emulated link are dropped. */
  let stopped = false;
  let deliveryError: unknown;
  let remote: RemoteSession | undefined = first;
  try {
    let delivered: Promise<unknown> = Promise.resolve();
    while (received.length < maxNewTokens) {
      deps.signal.throwIfAborted(); // an abort during open found no session to cancel
      const base = received.length;
      const prompt = idsTensor(handed ? [received[base - 1]] : base === 0 ? promptIds : [...promptIds, ...received]);
      const session = remote;
      if (!session) throw new Error('serverLoop: no executor session at the start of a round (every failure path opens a new one)');
      try {
        const from = run.transferFrom(bytesOf(prompt));
        // After a hand-over's puts the generate goes right behind them on the stream (as the
        // plan prices it: one crossing up for the cache and the token), not a latency later.
        await (from.behindPuts ? deps.emulator.uplinkBehind(bytesOf(prompt)) : deps.emulator.uplink(bytesOf(prompt)));
        deps.signal.throwIfAborted();
        await session.generate(prompt, maxNewTokens - base, (t) => {
          const index = base + t.index;
          received.push(t.token);
          run.serverComputeMs += t.computeMs;
          run.serverQueueMs += t.queueMs;
          const onLink = deps.emulator.downlink(TOKEN_DOWN_BYTES);
          delivered = Promise.all([delivered, onLink]).then(() => {
            if (stopped || deps.signal.aborted) return;
            try {
              if (t.index === 0) deps.estimator.recordTransfer(from.upBytes, TOKEN_DOWN_BYTES, performance.now() - from.sent - t.computeMs - t.queueMs);
              run.deliver(t.token);
            } catch (err) {
              deliveryError ??= err;
              stopped = true;
              run.remote?.cancel();
            }
          });
        });
      } catch (err) {
        if (deliveryError !== undefined) throw deliveryError;
        handed = false;
        run.drop();
        remote = undefined;
        let e: unknown = err;
        const hint = refusalHintOf(err);
        if (hint !== undefined) {
          // Refused at its start (the client's tokens per second): the refusal ended the session
          // and nothing of the generation ran. A new session tries again after the hint, when the
          // deadline leaves room; opening it fails as after a lost session (retried while
          // UNAVAILABLE within the deadline, any other error passes through).
          const left = session.deadline - Date.now();
          const { details, message } = err as { details?: string; message?: string };
          if (left < hint + REFUSAL_MARGIN_MS)
            throw new GenerateRefusedError(`${details ?? message} (the deadline is ${Math.max(0, Math.round(left))} ms away)`, hint);
          run.refusals++;
          await sleep(hint, deps.signal);
          e = undefined;
        }
        for (;;) {
          if (e !== undefined) await run.resumer.afterFailure(e, received.length);
          try {
            remote = await run.open();
            break;
          } catch (openErr) {
            e = openErr;
          }
        }
      }
    }
    await delivered;
    if (deliveryError !== undefined) throw deliveryError;
    deps.signal.throwIfAborted();
  } catch (err) {
    stopped = true;
    throw deliveryError ?? err;
  }
}
