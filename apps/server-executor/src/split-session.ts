import { randomUUID } from 'node:crypto';
import type { Metadata, ServerDuplexStream } from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import {
  capStatus,
  decodeProblem,
  firstNonFinite,
  fromWireTensor,
  quoted,
  renderShape,
  toWireTensor,
  type HostTensor,
  type KvPut,
  type KvTake,
  type ServerGenerate,
  type SessionRequest,
  type SessionResponse,
  type Step,
} from '@tandem/protocol';
import { concatPositions, tokenOfOutput, slicePositions, type Float32Tensor } from '@tandem/model';
import { errorEdge, ValidationError, type Logger } from '@tandem/service-kit';
import type { Admission } from './admission';
import type { SessionCache, StageEngine, StageKv } from './engine';
import { KvBudget, kvBytesOf, kvBytesPerToken } from './kv-budget';
import { PreconditionError, SessionClosedError, toGrpcStatus } from './errors';
import type { StageScheduler, StepOutcome } from './scheduler';
import { TokenRateError, type ClientTokenRates } from './token-rate';
import type { GenerationObserver } from './metrics';

/** Session traffic, summed over every session of the executor (for the overhead model). */
export interface TrafficCounters {
  messagesIn: number;
  bytesIn: number;
  messagesOut: number;
  bytesOut: number;
  /** KV-cache bytes taken in by kv_put (not in `bytesIn`: priced apart, see StepOverhead.ms_per_kv_kib_in). */
  kvBytesIn: number;
  /** KV-cache bytes sent in kv_chunks (not in `bytesOut`). */
  kvBytesOut: number;
}

export interface SessionLimits {
  readonly maxContextTokens: number;
  readonly idleTimeoutMs: number;
}

/** A step after validation: what the scheduler runs. */
interface ValidStep {
  /** As sent (a uint64 in decimal, echoed exactly). */
  readonly seq: string;
  readonly begin: number;
  readonly end: number;
  readonly input: HostTensor;
  readonly sample: boolean;
}

/** A server-side generation after validation. */
interface ValidGenerate {
  /** As sent (a uint64 in decimal, echoed exactly). */
  readonly seq: string;
  /** The prompt, int64 ids [1, T]; after a handed-over prefill, the token it produced [1, 1]. */
  readonly input: HostTensor;
  readonly maxNewTokens: number;
}

/** A kv_put chunk after validation. */
interface ValidPut {
  readonly stage: number;
  readonly tokens: number;
  /** An attention stage's keys and values; undefined for the other stages. */
  readonly kv: StageKv | undefined;
}

/** Key plus value bytes per KvChunk when kv_take.max_chunk_bytes is 0. */
export const DEFAULT_KV_CHUNK_BYTES = 1 << 20;

/**
 * One session: a bidi stream with its own KV cache. After `open` it is either split (the
 * client sends steps, each answered in order) or server-decoded (one `generate`: the session
 * runs the decode loop itself, one scheduler step per token, and streams the tokens).
 * Between the phases of a phased plan, `kv_put` and `kv_take` move single stages' state in
 * and out (a `generate` may then continue the handed-over prefill on the server).
 * Messages are handled strictly in order; the cache is released (and queued work
 * cancelled) when the stream ends, errors, is cancelled, idles out or the server stops.
 * `closed` resolves once, then.
 */
export class SplitSession {
  readonly id = randomUUID();
  /** The session's cache on the engine, from open until it closes. */
  private cache: SessionCache | undefined;
  private state: 'awaiting-open' | 'open' | 'closed' = 'awaiting-open';
  /** The last seq accepted (-1: none yet); seqs are uint64, compared exactly. */
  private lastSeq = -1n;
  /** What the session does after open: nothing yet, client steps, or one server-side generation. */
  private mode: 'unset' | 'split' | 'generate' = 'unset';
  /** `open.private`: the client's token ids and text must not reach this server. */
  private private = false;
  /** Steps answered so far (for the message refusing a late generate). */
  private stepsRun = 0;
  /** Stages whose tokens here all came from kv_put chunks (no step ran them since): a further chunk continues them. */
  private readonly putting = new Set<number>();
  /**
   * kv_put chunks taken but not yet given to the engine, per stage, in arrival order. A run of
   * kv_put messages is held until any other message comes; then each stage's chunks are joined
   * (one copy of its KV) and every stage is put at once: the engine calls are posted together,
   * so the hand-over waits behind the engine's current work once, not once per stage (a
   * device prefill handing the `small` model's 14 stages to a busy server had waited for the
   * batch then running 14 times over). Validated and
   * budgeted as they arrive; the session counts them as held.
   */
  private readonly pendingPuts = new Map<number, { tokens: number; keys: Float32Tensor[]; values: Float32Tensor[] }>();
  /**
   * kv_take answers in flight: each take's engine call is posted when its message comes, and
   * its chunks are written after the earlier takes' (this chain). A run of kv_take messages so
   * waits behind the engine's current work once, not once per stage; any other message waits
   * for the chain first, and so does the end of the stream.
   */
  private takes: Promise<void> = Promise.resolve();
  /** Stages whose kv_take is in flight (they count as holding nothing). */
  private readonly taking = new Set<number>();
  /** The server-side decode loop, while or after it runs. */
  private generation: Promise<void> | undefined;
  /**
   * True while the server works for the client (a step in flight, or the server-side decode
   * loop): no client message is due, so the idle timeout is off.
   */
  private serverBusy = false;
  /** Aborted when the session closes (wakes a loop waiting for the client to read). */
  private readonly ended = new AbortController();
  /** KV-cache bytes this session reserved from the executor's budget (given back when it closes). */
  private kvReserved = 0;
  private chain: Promise<void> = Promise.resolve();
  /** Why the session closed, once it did. */
  private closedBecause: string | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  private resolveClosed!: () => void;
  readonly closed = new Promise<void>((r) => {
    this.resolveClosed = r;
  });
  clientId = '';

  constructor(
    private readonly call: ServerDuplexStream<SessionRequest, SessionResponse>,
    private readonly engine: StageEngine,
    private readonly scheduler: StageScheduler,
    private readonly limits: SessionLimits,
    private readonly log: Logger,
    /** Asked on open (it throws the refusal), left on close. */
    private readonly admission: Pick<Admission<SplitSession>, 'admit' | 'leave'>,
    private readonly traffic: TrafficCounters = { messagesIn: 0, bytesIn: 0, messagesOut: 0, bytesOut: 0, kvBytesIn: 0, kvBytesOut: 0 },
    private readonly kv: KvBudget = new KvBudget(Number.MAX_SAFE_INTEGER),
    /** Tokens per second per client id (EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT); undefined: no limit. */
    private readonly rates?: ClientTokenRates,
    /** Told when a server-side generation starts, makes a token and ends (the executor's metrics). */
    private readonly observer?: GenerationObserver,
  ) {
    call.on('data', (m: SessionRequest) => {
      this.chain = this.chain.then(() => this.onMessage(m));
    });
    // A half-close during a server-side generation ends the session once the generation is done.
    call.on('end', () => {
      this.chain = this.chain.then(async () => {
        await this.takes;
        await this.generation;
        await this.finish('client ended the stream');
      });
    });
    // A call ends cancelled when the client cancels it or its connection is dropped (the
    // client's or the server's keepalive found the peer dead, or the socket failed).
    call.on('cancelled', () => this.close('cancelled by the client or its connection was lost', status.CANCELLED, false));
    call.on('error', (err: Partial<Error>) => this.close(`stream error: ${capStatus(String(err.message), 200)}`, status.CANCELLED, false));
    this.touch();
  }

  get isOpen(): boolean {
    return this.state === 'open';
  }

  /** (Re)starts the idle timeout, unless the server works for the client; `why` is the status message it ends the session with. */
  private touch(why = `session idle for ${this.limits.idleTimeoutMs} ms`): void {
    clearTimeout(this.idleTimer);
    if (this.state === 'closed' || this.serverBusy) return;
    const timer = setTimeout(() => {
      // The timer can fire late, after the event loop was held (a long inline batch), with the
      // client's next message already read by the kernel but not yet by us: timers run before
      // I/O. Let pending I/O run first and end the session only if nothing touched it since.
      setImmediate(() => {
        if (this.idleTimer === timer && !this.serverBusy && this.state !== 'closed') this.close(why, status.DEADLINE_EXCEEDED, true);
      });
    }, this.limits.idleTimeoutMs);
    timer.unref();
    this.idleTimer = timer;
  }

  private async onMessage(m: SessionRequest): Promise<void> {
    if (this.state === 'closed') return;
    this.touch();
    try {
      // A message that did not decode (bytes that are no SessionRequest, a 64-bit value out of range).
      const problem = decodeProblem(m);
      if (problem) throw new ValidationError(problem.message);
      if (this.taking.size > 0 && m.kind?.$case !== 'kvTake') {
        await this.takes;
        if (!this.isOpen) return;
      }
      if (this.pendingPuts.size > 0 && m.kind?.$case !== 'kvPut') {
        await this.flushPuts();
        if (!this.isOpen) return;
      }
      switch (m.kind?.$case) {
        case 'open': {
          if (this.state !== 'awaiting-open') throw new PreconditionError('open must be sent once, as the first message; given a second open');
          const o = m.kind.value;
          if (o.modelId && o.modelId !== this.engine.modelId)
            throw new PreconditionError(`open.model_id must be ${quoted(this.engine.modelId)} (the model served), given ${quoted(o.modelId)}`);
          this.clientId = o.clientId;
          this.private = o.private === true;
          this.admission.admit(this, this.call.metadata);
          this.cache = this.engine.newCache();
          this.state = 'open';
          this.log.debug({ sessionId: this.id, clientId: o.clientId, planEpoch: o.planEpoch }, 'session opened');
          this.call.write({
            kind: {
              $case: 'opened',
              value: { sessionId: this.id, modelId: this.engine.modelId, stageCount: this.engine.stageCount, maxContextTokens: this.limits.maxContextTokens },
            },
          });
          return;
        }
        case 'step': {
          if (this.state !== 'open') throw new PreconditionError('the first message must be open, given step');
          this.traffic.messagesIn++;
          this.traffic.bytesIn += m.kind.value.input?.data.byteLength ?? 0;
          if (this.mode === 'generate')
            throw new PreconditionError(`step may not follow generate (the server decodes this session), given step seq ${m.kind.value.seq}`);
          const step = this.validate(m.kind.value);
          if (this.overRate(step)) return;
          this.lastSeq = BigInt(step.seq);
          for (let s = step.begin; s < step.end; s++) this.putting.delete(s);
          this.reserveKv(kvBytesOf(this.engine.stageCount, this.engine.nEmbd, step.begin, step.end, step.input.shape[1]), `step seq ${step.seq}`);
          this.mode = 'split';
          // While the server owes the answer, the client is not idle (a long queue must not idle it out).
          this.serverBusy = true;
          clearTimeout(this.idleTimer);
          let out: StepOutcome;
          try {
            out = await this.scheduler.submit(this.id, step.begin, step.end, step.input, this.liveCache, { lastRowOnly: step.sample, sample: step.sample });
          } finally {
            this.serverBusy = false;
            this.touch();
          }
          if (!this.isOpen) return; // closed while the step ran
          this.stepsRun++;
          const result: SessionResponse = step.sample
            ? {
                kind: {
                  $case: 'result',
                  value: {
                    seq: step.seq,
                    output: { $case: 'token', value: tokenOfOutput(out.tensor, this.engine.vocabSize) },
                    computeMs: out.computeMs,
                    queueMs: out.queueMs,
                    serviceMs: out.serviceMs,
                  },
                },
              }
            : {
                kind: {
                  $case: 'result',
                  value: {
                    seq: step.seq,
                    output: { $case: 'tensor', value: toWireTensor(out.tensor) },
                    computeMs: out.computeMs,
                    queueMs: out.queueMs,
                    serviceMs: out.serviceMs,
                  },
                },
              };
          this.traffic.messagesOut++;
          this.traffic.bytesOut +=
            result.kind?.$case === 'result' && result.kind.value.output?.$case === 'tensor' ? result.kind.value.output.value.data.byteLength : 8;
          this.call.write(result);
          return;
        }
        case 'generate': {
          if (this.state !== 'open') throw new PreconditionError('the first message must be open, given generate');
          if (this.mode === 'generate') throw new PreconditionError('generate may be sent once per session, given a second generate');
          if (this.private) throw new PreconditionError('generate is refused in a private session (open.private: the server would see token ids and text)');
          const held = this.mode === 'split' ? this.handedOverTokens() : 0;
          this.traffic.messagesIn++;
          this.traffic.bytesIn += m.kind.value.input?.data.byteLength ?? 0;
          const g = this.validateGenerate(m.kind.value, held);
          // Refused only when the client's bucket is empty (ending the session, which holds nothing new yet); once running it is paced.
          this.rates?.admitGeneration(this.clientId, `generate seq ${g.seq}`);
          // The whole generation's cache up front: the prompt (or the prefill's token) plus every token fed back.
          this.reserveKv(kvBytesOf(this.engine.stageCount, this.engine.nEmbd, 0, this.engine.stageCount, g.input.shape[1] + g.maxNewTokens - 1), 'generate');
          this.mode = 'generate';
          this.putting.clear();
          // Not awaited: later messages are answered (refused) at once; a half-close waits for it.
          this.generation = this.decode(g);
          return;
        }
        case 'kvPut': {
          if (this.state !== 'open') throw new PreconditionError('the first message must be open, given kv_put');
          const put = m.kind.value;
          this.traffic.messagesIn++;
          this.traffic.kvBytesIn += (put.key?.data.byteLength ?? 0) + (put.value?.data.byteLength ?? 0);
          const valid = this.validatePut(put);
          if (!this.engine.putState) throw new PreconditionError(`kv_put is not supported by this executor's engine, given kv_put of stage ${put.stage}`);
          this.reserveKv(valid.kv ? valid.tokens * kvBytesPerToken(this.engine.nEmbd) : 0, `kv_put of stage ${valid.stage}`);
          this.mode = 'split';
          // Held here until another message comes (flushPuts): the chunk's tensors are views of its own message.
          let pending = this.pendingPuts.get(valid.stage);
          if (pending === undefined) this.pendingPuts.set(valid.stage, (pending = { tokens: 0, keys: [], values: [] }));
          pending.tokens += valid.tokens;
          if (valid.kv) {
            pending.keys.push(valid.kv.key);
            pending.values.push(valid.kv.value);
          }
          this.putting.add(valid.stage);
          this.observer?.handOver?.('put', valid.kv ? valid.kv.key.data.byteLength + valid.kv.value.data.byteLength : 0, put.offset === 0);
          return;
        }
        case 'kvTake':
          if (this.state !== 'open') throw new PreconditionError('the first message must be open, given kv_take');
          this.traffic.messagesIn++;
          this.take(m.kind.value);
          return;
        default:
          throw new ValidationError('message.kind must be open, step, generate, kv_put or kv_take, given nothing');
      }
    } catch (err) {
      this.fail(err);
    }
  }

  /**
   * Takes the step's tokens from the client's rate (EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT), or
   * answers it with StepRefused and returns true: nothing of the step was taken (its seq, KV,
   * tokens), so the session stays as it was and the client may send it again after the hint.
   */
  private overRate(step: ValidStep): boolean {
    if (!this.rates) return false;
    try {
      this.rates.step(this.clientId, step.input.shape[1], `step seq ${step.seq}`);
      return false;
    } catch (err) {
      if (!(err instanceof TokenRateError)) throw err;
      this.log.debug(
        { sessionId: this.id, clientId: this.clientId, seq: step.seq, retryAfterMs: err.retryAfterMs },
        "refused a step over the client's token rate",
      );
      this.traffic.messagesOut++;
      this.call.write({
        kind: { $case: 'refused', value: { seq: step.seq, code: status.RESOURCE_EXHAUSTED, message: capStatus(err.message), retryAfterMs: err.retryAfterMs } },
      });
      return true;
    }
  }

  /** Ends the session with the status an error maps to (nothing when the session already closed). */
  private fail(err: unknown): void {
    if (err instanceof SessionClosedError && !this.isOpen) return;
    const st = errorEdge(this.log, toGrpcStatus)(err, { sessionId: this.id });
    if (st.code !== status.INTERNAL) this.log.debug({ sessionId: this.id, code: st.code, details: st.details }, 'refused a message');
    this.close(st.details, st.code, true, st.metadata);
  }

  /**
   * The server-side decode loop: the prompt's prefill, then one step per token with the
   * previous token as input, each a scheduler step over every stage (so it batches with
   * other sessions' steps, joining and leaving at step boundaries) running the head on the
   * last position only. Each token is written as soon as it is made; when the client reads
   * slower than tokens come, the loop waits for the stream to drain (and only then may the
   * session idle out: while the server decodes, the idle timeout is off), ending with
   * DEADLINE_EXCEEDED when it stays full for the idle timeout. A client gone without FIN or
   * RST, whose tokens still fit the buffers, is noticed by the server's keepalive instead
   * (the call is cancelled: ExecutorServerOptions.keepalive). With a per-client
   * token rate each step first waits until the client's bucket has room (the generation is
   * paced, not failed). It stops at once when the session closes (cancel, deadline, shutdown):
   * the pending step is cancelled with it.
   */
  private async decode(g: ValidGenerate): Promise<void> {
    const n = this.engine.stageCount;
    this.serverBusy = true;
    clearTimeout(this.idleTimer);
    this.log.debug({ sessionId: this.id, promptTokens: g.input.shape[1], maxNewTokens: g.maxNewTokens }, 'server-side generation started');
    /** Tokens made and written so far. */
    let made = 0;
    /** An error of the generation's own (not the session closing under it). */
    let failed = false;
    this.observer?.generationStarted();
    try {
      let input = g.input;
      for (let index = 0; index < g.maxNewTokens; index++) {
        if (this.rates && !(await this.rates.pace(this.clientId, input.shape[1], this.ended.signal))) return;
        const out = await this.scheduler.submit(this.id, 0, n, input, this.liveCache, { lastRowOnly: true, sample: true });
        if (!this.isOpen) return;
        const token = tokenOfOutput(out.tensor, this.engine.vocabSize);
        const last = index === g.maxNewTokens - 1;
        this.traffic.messagesOut++;
        this.traffic.bytesOut += 8;
        const flowing = this.call.write({
          kind: { $case: 'token', value: { seq: g.seq, index, token, computeMs: out.computeMs, queueMs: out.queueMs, last } },
        });
        made++;
        this.observer?.token();
        if (last) break;
        if (!flowing) {
          // The client stopped reading (or its link died and the buffers filled): now it is the
          // one idle, so the idle timeout runs, with a message that says what it waited for.
          this.serverBusy = false;
          this.touch(
            `the client read no token for ${this.limits.idleTimeoutMs} ms (the server-side generation stalled with its stream full after ${index + 1} of ${g.maxNewTokens} tokens)`,
          );
          await this.drained();
          this.serverBusy = true;
          clearTimeout(this.idleTimer);
        }
        if (!this.isOpen) return;
        input = { dtype: 'int64', shape: [1, 1], data: BigInt64Array.of(BigInt(token)) };
      }
      this.log.debug({ sessionId: this.id, tokens: g.maxNewTokens }, 'server-side generation done');
    } catch (err) {
      failed = this.closedBecause === undefined;
      this.fail(err);
    } finally {
      this.serverBusy = false;
      this.observer?.generationEnded(made === g.maxNewTokens ? 'completed' : failed ? 'failed' : 'cancelled');
      this.touch(); // now the client's half-close is due
      // Work cut short for a client that cancelled, vanished, idled or was shut down: worth an operator's eye.
      if (made < g.maxNewTokens && this.closedBecause !== undefined) {
        this.log.info(
          { sessionId: this.id, clientId: this.clientId, tokens: made, maxNewTokens: g.maxNewTokens, reason: this.closedBecause },
          'server-side generation stopped before its end',
        );
      }
    }
  }

  /** The session's cache (from open until it closes). */
  private get liveCache(): SessionCache {
    if (this.cache === undefined) throw new SessionClosedError(this.closedBecause ?? 'the session is not open', status.FAILED_PRECONDITION);
    return this.cache;
  }

  /** Reserves KV bytes from the executor's budget for this session. @throws CapacityError (RESOURCE_EXHAUSTED) when they do not fit. */
  private reserveKv(bytes: number, what: string): void {
    this.kv.reserve(bytes, what);
    this.kvReserved += bytes;
  }

  /** Resolves when the stream can take more writes, or the session closed (a cancelled call never drains). */
  private drained(): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        this.call.off('drain', done);
        this.ended.signal.removeEventListener('abort', done);
        resolve();
      };
      this.call.once('drain', done);
      this.ended.signal.addEventListener('abort', done, { once: true });
      if (this.ended.signal.aborted) done();
    });
  }

  private validate(step: Step): ValidStep {
    const n = this.engine.stageCount;
    const seq = BigInt(step.seq);
    if (seq <= this.lastSeq) throw new ValidationError(`step.seq must increase within a session (last ${this.lastSeq}), given ${step.seq}`);
    if (!(step.stageBegin < n)) throw new ValidationError(`step.stage_begin must be in 0..${n - 1}, given ${step.stageBegin}`);
    if (!(step.stageEnd > step.stageBegin && step.stageEnd <= n))
      throw new ValidationError(`step.stage_end must be in ${step.stageBegin + 1}..${n}, given ${step.stageEnd}`);
    if (this.private && step.stageBegin === 0)
      throw new PreconditionError('step.stage_begin must be >= 1 in a private session (open.private: token ids stay on the device), given 0');
    if (this.private && step.stageEnd === n)
      throw new PreconditionError(`step.stage_end must be <= ${n - 1} in a private session (open.private: the head's tokens stay on the device), given ${n}`);
    if (step.sample && step.stageEnd !== n)
      throw new ValidationError(`step.sample must be false unless the range ends with the head (stage_end ${n}), given true with stage_end ${step.stageEnd}`);
    const input = fromWireTensor(step.input, 'step.input');
    const wantIds = step.stageBegin === 0;
    if (wantIds && input.dtype !== 'int64')
      throw new ValidationError('step.input.dtype must be DATA_TYPE_INT64 (token ids) for the embed stage, given DATA_TYPE_FLOAT32');
    if (!wantIds && input.dtype !== 'float32')
      throw new ValidationError(`step.input.dtype must be DATA_TYPE_FLOAT32 (hidden state) for stage ${step.stageBegin}, given DATA_TYPE_INT64`);
    const shape = input.shape;
    const okShape = wantIds
      ? shape.length === 2 && shape[0] === 1 && shape[1] >= 1
      : shape.length === 3 && shape[0] === 1 && shape[1] >= 1 && shape[2] === this.engine.nEmbd;
    if (!okShape)
      throw new ValidationError(`step.input.shape must be ${wantIds ? '[1, T>=1]' : `[1, T>=1, ${this.engine.nEmbd}]`}, given ${renderShape(shape)}`);
    if (wantIds) this.checkIds(input.data as BigInt64Array, 'step.input');
    else {
      // NaN or ±Infinity would run through every stage and give tokens computed from nothing.
      const data = input.data as Float32Array;
      const bad = firstNonFinite(data);
      if (bad >= 0)
        throw new ValidationError(
          `step.input must hold finite float32 values (no NaN or ±Infinity), given ${data[bad]} at index ${bad} (position ${Math.floor(bad / this.engine.nEmbd)}, channel ${bad % this.engine.nEmbd})`,
        );
    }
    const t = shape[1];
    const cache = this.liveCache;
    this.checkContinuity(cache, step.stageBegin, step.stageEnd, t);
    for (let s = step.stageBegin; s < step.stageEnd; s++) {
      if (cache.tokensAt(s) + t > this.limits.maxContextTokens) {
        throw new PreconditionError(
          `step would make stage ${s} hold ${cache.tokensAt(s) + t} tokens; the context must stay <= ${this.limits.maxContextTokens} tokens`,
        );
      }
    }
    return { seq: step.seq, begin: step.stageBegin, end: step.stageEnd, input, sample: step.sample };
  }

  /**
   * Refuses a step that does not continue this session's earlier steps: its stages would run
   * on KV caches of different lengths (positions off by the difference) and give wrong logits.
   * A stage this session ran holds as many tokens as inputs it took (SessionCache.tokensAt);
   * stages run on the client hold 0. Rules: every stage of [begin, end) holds the same count; the stage
   * before `begin`, when the server ran it, has taken this input already; the stage at `end`,
   * when the server ran it, has taken the previous input.
   * @throws PreconditionError naming the field and the value expected.
   */
  private checkContinuity(cache: SessionCache, begin: number, end: number, t: number): void {
    const at = (s: number): number => cache.tokensAt(s);
    const held = at(begin);
    for (let s = begin + 1; s < end; s++) {
      if (at(s) !== held) {
        throw new PreconditionError(
          `step.stage_end must be ${s} (stage ${s} holds ${at(s)} tokens, stage ${begin} holds ${held}: this session's earlier steps did not run them together), given ${end}`,
        );
      }
    }
    if (begin > 0 && at(begin - 1) > 0 && at(begin - 1) !== held + t) {
      if (at(begin - 1) === held) {
        // The stages before `begin` that have not taken this input yet: the step should start with them.
        let expected = begin - 1;
        while (expected > 0 && at(expected - 1) === held) expected--;
        throw new PreconditionError(
          `step.stage_begin must be ${expected} (stages ${expected}..${begin - 1} hold ${held} tokens like stage ${begin}: this session's earlier steps started at stage ${expected}), given ${begin}`,
        );
      }
      throw new PreconditionError(
        `step.stage_begin ${begin} does not continue this session: stage ${begin - 1} must hold ${held + t} tokens before it (stage ${begin} holds ${held}, the step brings ${t}), given a stage ${begin - 1} holding ${at(begin - 1)}`,
      );
    }
    if (end < this.engine.stageCount && at(end) > 0 && at(end) !== held) {
      throw new PreconditionError(
        `step.stage_begin must be ${end} (stage ${end} holds ${at(end)} tokens but stage ${end - 1} holds ${held}: the previous input has not run stage ${end} yet), given ${begin}`,
      );
    }
  }

  /** @throws ValidationError naming `field` when an id is outside the vocabulary. */
  private checkIds(ids: BigInt64Array, field: string): void {
    const vocab = BigInt(this.engine.vocabSize);
    for (const id of ids) {
      if (id < 0n || id >= vocab) throw new ValidationError(`${field} token ids must be in 0..${this.engine.vocabSize - 1}, given ${id}`);
    }
  }

  /**
   * The N every stage holds after a handed-over prefill (steps and kv_puts ran before a
   * generate). @throws PreconditionError naming the rule when the stages hold different counts or none.
   */
  private handedOverTokens(): number {
    const cache = this.liveCache;
    const n = cache.tokensAt(0);
    for (let s = 0; s < this.engine.stageCount; s++) {
      const at = cache.tokensAt(s);
      if (at !== n || at === 0) {
        throw new PreconditionError(
          `generate must be the first message after open, or continue a handed-over prefill in which every stage holds the same number N >= 1 of tokens; given stage ${s} holding ${at} and stage 0 holding ${n} (after ${this.stepsRun} step(s))`,
        );
      }
    }
    return n;
  }

  /** Checks a generate against the rules of the protocol and the session's context limit; `held` is the N every stage holds (0 from the prompt). */
  private validateGenerate(g: ServerGenerate, held: number): ValidGenerate {
    const input = fromWireTensor(g.input, 'generate.input');
    if (input.dtype !== 'int64') throw new ValidationError('generate.input.dtype must be DATA_TYPE_INT64 (token ids), given DATA_TYPE_FLOAT32');
    const shape = input.shape;
    if (!(shape.length === 2 && shape[0] === 1 && shape[1] >= 1))
      throw new ValidationError(`generate.input.shape must be [1, T>=1], given ${renderShape(shape)}`);
    if (held > 0 && shape[1] !== 1)
      throw new ValidationError(
        `generate.input.shape must be [1, 1] after a handed-over prefill (the token it produced; every stage holds ${held} tokens), given ${renderShape(shape)}`,
      );
    this.checkIds(input.data, 'generate.input');
    if (!(g.maxNewTokens >= 1)) throw new ValidationError(`generate.max_new_tokens must be >= 1, given ${g.maxNewTokens}`);
    const t = shape[1];
    // The last token is never fed back, so the cache ends up holding N + T + maxNewTokens - 1 tokens.
    const holds = held + t + g.maxNewTokens - 1;
    if (holds > this.limits.maxContextTokens) {
      throw new PreconditionError(
        held > 0
          ? `generate would make the session hold ${holds} tokens (${held} handed over + input ${t} + max_new_tokens ${g.maxNewTokens} - 1); the context must stay <= ${this.limits.maxContextTokens} tokens`
          : `generate would make the session hold ${holds} tokens (prompt ${t} + max_new_tokens ${g.maxNewTokens} - 1); the context must stay <= ${this.limits.maxContextTokens} tokens`,
      );
    }
    this.lastSeq = BigInt(g.seq);
    return { seq: g.seq, input, maxNewTokens: g.maxNewTokens };
  }

  /**
   * Gives the pending kv_put chunks (see `pendingPuts`) to the engine: each stage's joined, one
   * call per stage, every call posted before any is awaited. The first failure is thrown once
   * all have settled.
   */
  private async flushPuts(): Promise<void> {
    const puts = [...this.pendingPuts];
    this.pendingPuts.clear();
    const putEngine = this.engine.putState?.bind(this.engine);
    if (!putEngine) throw new PreconditionError(`kv_put is not supported by this executor's engine, given kv_put of stage ${puts[0][0]}`);
    const cache = this.liveCache;
    this.serverBusy = true;
    clearTimeout(this.idleTimer);
    try {
      const settled = await Promise.allSettled(
        puts.map(([stage, p]) => putEngine(stage, cache, p.tokens, p.keys.length > 0 ? { key: join(p.keys), value: join(p.values) } : undefined)),
      );
      const failed = settled.find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
    } finally {
      this.serverBusy = false;
      this.touch();
    }
  }

  /** The tokens stage `stage` holds, kv_put chunks not yet given to the engine included. */
  private heldAt(stage: number): number {
    return this.liveCache.tokensAt(stage) + (this.pendingPuts.get(stage)?.tokens ?? 0);
  }

  /** The rules kv_put and kv_take share: a stage of the model, a session that has not run generate, the private session's first and last stage. */
  private checkHandOverStage(stage: number, field: 'kv_put' | 'kv_take'): void {
    const n = this.engine.stageCount;
    if (this.mode === 'generate')
      throw new PreconditionError(`${field} may not follow generate (the server decodes this session), given ${field} of stage ${stage}`);
    if (!(stage < n)) throw new ValidationError(`${field}.stage must be in 0..${n - 1}, given ${stage}`);
    if (this.private && (stage === 0 || stage === n - 1))
      throw new PreconditionError(
        `${field}.stage must be in 1..${n - 2} in a private session (open.private: the first and last stage stay on the device), given ${stage}`,
      );
  }

  /** Checks one kv_put chunk against the protocol's rules (nothing is taken when one breaks). */
  private validatePut(put: KvPut): ValidPut {
    const { stage, offset, tokens } = put;
    this.checkHandOverStage(stage, 'kv_put');
    const held = this.heldAt(stage);
    if (held > 0 && !this.putting.has(stage))
      throw new PreconditionError(
        `kv_put.stage ${stage} holds ${held} tokens this session computed on the server; a stage's state may be put only into a stage holding none (first chunk at offset 0), given kv_put of stage ${stage} at offset ${offset}`,
      );
    if (offset !== held)
      throw new PreconditionError(
        `kv_put.offset must be ${held} (the tokens stage ${stage} holds: chunks cover positions in order, without gaps), given ${offset}`,
      );
    if (!(tokens >= 1)) throw new ValidationError(`kv_put.tokens must be >= 1, given ${tokens}`);
    if (offset + tokens > this.limits.maxContextTokens)
      throw new PreconditionError(
        `kv_put would make stage ${stage} hold ${offset + tokens} tokens (offset ${offset} + tokens ${tokens}); the context must stay <= ${this.limits.maxContextTokens} tokens`,
      );
    const kind = this.engine.stageKind(stage);
    if (kind !== 'attn') {
      for (const f of ['key', 'value'] as const) {
        if (put[f] !== undefined)
          throw new ValidationError(`kv_put.${f} must be absent for stage ${stage} (${kind}: its state is its token count), given a tensor`);
      }
      return { stage, tokens, kv: undefined };
    }
    const H = this.engine.nHead;
    const hd = this.engine.nEmbd / H;
    const want = [1, H, tokens, hd];
    const [key, value] = (['key', 'value'] as const).map((f): Float32Tensor => {
      const field = `kv_put.${f}`;
      if (put[f] === undefined) throw new ValidationError(`${field} is required for attention stage ${stage}, given nothing`);
      const t = fromWireTensor(put[f], field);
      if (t.dtype !== 'float32') throw new ValidationError(`${field}.dtype must be DATA_TYPE_FLOAT32, given DATA_TYPE_INT64`);
      if (t.shape.length !== 4 || t.shape.some((d, i) => d !== want[i]))
        throw new ValidationError(
          `${field}.shape must be [${want.join(', ')}] ([1, n_head, tokens, head_dim] of the served model), given ${renderShape(t.shape)}`,
        );
      const bad = firstNonFinite(t.data);
      if (bad >= 0) throw new ValidationError(`${field} must hold finite float32 values (no NaN or ±Infinity), given ${t.data[bad]} at index ${bad}`);
      return t;
    });
    return { stage, tokens, kv: { key, value } };
  }

  /**
   * Answers a kv_take: the stage's state in KvChunks of whole positions (at most
   * `max_chunk_bytes` of keys plus values each, at least one position), the last flagged;
   * then the stage holds nothing here and its KV bytes go back to the budget. Waits for the
   * stream to drain between chunks when the client reads slowly (the idle timeout runs then).
   */
  private take(t: KvTake): void {
    const seq = BigInt(t.seq);
    if (seq <= this.lastSeq)
      throw new ValidationError(`kv_take.seq must increase within a session together with the steps' (last ${this.lastSeq}), given ${t.seq}`);
    this.checkHandOverStage(t.stage, 'kv_take');
    const cache = this.liveCache;
    const n = this.taking.has(t.stage) ? 0 : cache.tokensAt(t.stage);
    if (n === 0)
      throw new PreconditionError(
        `kv_take.stage ${t.stage} must hold at least one token on the server (it holds none: it ran on the client or was taken), given ${t.stage}`,
      );
    const takeEngine = this.engine.takeState?.bind(this.engine);
    if (!takeEngine) throw new PreconditionError(`kv_take is not supported by this executor's engine, given kv_take of stage ${t.stage}`);
    this.lastSeq = seq;
    this.mode = 'split';
    this.serverBusy = true;
    clearTimeout(this.idleTimer);
    // Posted now, in order with the session's other engine calls; answered in order below.
    const taken = takeEngine(t.stage, cache);
    this.taking.add(t.stage);
    this.takes = this.takes
      .then(() => this.sendTaken(t, n, taken))
      .catch((err: unknown) => this.fail(err))
      .finally(() => this.taking.delete(t.stage));
  }

  /** Writes what one kv_take took (see `take`) as KvChunks, once the engine answered and the earlier takes were written. */
  private async sendTaken(t: KvTake, n: number, taken: Promise<StageKv | undefined>): Promise<void> {
    let kv: StageKv | undefined;
    try {
      kv = await taken;
    } finally {
      this.serverBusy = false;
      this.touch();
    }
    this.putting.delete(t.stage);
    if (kv) {
      // At most what the session still holds: a session closed meanwhile gave everything back.
      const freed = Math.min(this.kvReserved, n * kvBytesPerToken(this.engine.nEmbd));
      this.kv.release(freed);
      this.kvReserved -= freed;
    }
    this.observer?.handOver?.('take', kv ? kv.key.data.byteLength + kv.value.data.byteLength : 0, true);
    if (!this.isOpen) return;
    const perChunk = kv ? Math.max(1, Math.floor((t.maxChunkBytes || DEFAULT_KV_CHUNK_BYTES) / kvBytesPerToken(this.engine.nEmbd))) : n;
    for (let offset = 0; offset < n; offset += perChunk) {
      const tokens = Math.min(perChunk, n - offset);
      const last = offset + tokens === n;
      const key = kv ? toWireTensor(slicePositions(kv.key, offset, offset + tokens)) : undefined;
      const value = kv ? toWireTensor(slicePositions(kv.value, offset, offset + tokens)) : undefined;
      this.traffic.messagesOut++;
      this.traffic.kvBytesOut += (key?.data.byteLength ?? 0) + (value?.data.byteLength ?? 0);
      this.traffic.bytesOut += 16;
      const flowing = this.call.write({ kind: { $case: 'kvChunk', value: { seq: t.seq, stage: t.stage, offset, tokens, key, value, last } } });
      if (!flowing && !last) {
        // The client is the one idle while its stream stays full (each drain is progress).
        this.touch(
          `the client read no kv_chunk for ${this.limits.idleTimeoutMs} ms (kv_take seq ${t.seq} stalled with its stream full after ${offset + tokens} of ${n} positions)`,
        );
        await this.drained();
        if (!this.isOpen) return;
        this.touch();
      }
    }
  }

  private async finish(reason: string): Promise<void> {
    if (this.state === 'closed') return;
    this.release(reason, status.CANCELLED);
    this.call.end();
  }

  /**
   * Ends the session: frees the cache, cancels queued work, and (when `sendStatus`)
   * ends the stream with the given status. Idempotent.
   */
  close(reason: string, code: status, sendStatus: boolean, metadata?: Metadata): void {
    if (this.state === 'closed') return;
    this.release(reason, code);
    // Every status message fits in 1 KiB (gRPC C-core clients refuse trailers over 8 KiB).
    if (sendStatus) this.call.emit('error', { code, details: capStatus(reason), ...(metadata ? { metadata } : {}) });
  }

  private release(reason: string, code: status): void {
    this.state = 'closed';
    this.closedBecause = reason;
    this.admission.leave(this);
    this.kv.release(this.kvReserved);
    this.kvReserved = 0;
    this.pendingPuts.clear();
    clearTimeout(this.idleTimer);
    this.ended.abort();
    const cache = this.cache;
    this.cache = undefined;
    void this.scheduler.cancelSession(this.id, new SessionClosedError(reason, code)).then(() => {
      if (cache !== undefined) this.engine.releaseCache(cache);
    });
    this.log.debug({ sessionId: this.id, reason }, 'session closed');
    this.resolveClosed();
  }
}

/** Key or value chunks of one stage as one tensor (the chunk itself when there is one). */
function join(parts: readonly Float32Tensor[]): Float32Tensor {
  return parts.length === 1 ? parts[0] : concatPositions(parts);
}
