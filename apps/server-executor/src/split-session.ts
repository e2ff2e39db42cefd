import { randomUUID } from 'node:crypto';
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import { fromWireTensor, toWireTensor, type HostTensor, type SessionRequest, type SessionResponse, type Step } from '@tandem/protocol';
import { greedyToken } from '@tandem/model';
import type { Logger } from '@tandem/service-kit';
import type { StageEngine } from './engine';
import { PreconditionError, SessionClosedError, toGrpcStatus, ValidationError } from './errors';
import type { StageScheduler } from './scheduler';

/** Session traffic, summed over every session of the executor (for the overhead model). */
export interface TrafficCounters {
  messagesIn: number;
  bytesIn: number;
  messagesOut: number;
  bytesOut: number;
}

export interface SessionLimits {
  readonly maxContextTokens: number;
  readonly idleTimeoutMs: number;
}

/** A step after validation: what the scheduler runs. */
interface ValidStep {
  readonly seq: number;
  readonly begin: number;
  readonly end: number;
  readonly input: HostTensor;
  readonly sample: boolean;
}

/**
 * One split session: a bidi stream with its own KV cache. Messages are handled strictly
 * in order; the cache is released (and queued work cancelled) when the stream ends,
 * errors, is cancelled, idles out or the server stops. `closed` resolves once, then.
 */
export class SplitSession {
  readonly id = randomUUID();
  private cache: unknown;
  private state: 'awaiting-open' | 'open' | 'closed' = 'awaiting-open';
  private lastSeq = -1;
  /** Tokens each stage of this session has consumed. */
  private readonly tokensAt: Uint32Array;
  private chain: Promise<void> = Promise.resolve();
  private idleTimer: NodeJS.Timeout | undefined;
  private resolveClosed!: () => void;
  readonly closed = new Promise<void>((r) => { this.resolveClosed = r; });
  clientId = '';

  constructor(
    private readonly call: ServerDuplexStream<SessionRequest, SessionResponse>,
    private readonly engine: StageEngine,
    private readonly scheduler: StageScheduler,
    private readonly limits: SessionLimits,
    private readonly log: Logger,
    private readonly admit: (s: SplitSession) => void,
    private readonly traffic: TrafficCounters = { messagesIn: 0, bytesIn: 0, messagesOut: 0, bytesOut: 0 },
  ) {
    this.tokensAt = new Uint32Array(engine.stageCount);
    call.on('data', (m: SessionRequest) => { this.chain = this.chain.then(() => this.onMessage(m)); });
    call.on('end', () => { this.chain = this.chain.then(() => this.finish('client ended the stream')); });
    call.on('cancelled', () => this.close('cancelled by the client', status.CANCELLED, false));
    call.on('error', (err) => this.close(`stream error: ${err.message}`, status.CANCELLED, false));
    this.touch();
  }

  get isOpen(): boolean { return this.state === 'open'; }

  private touch(): void {
    clearTimeout(this.idleTimer);
    if (this.state === 'closed') return;
    this.idleTimer = setTimeout(() => this.close(`session idle for ${this.limits.idleTimeoutMs} ms`, status.DEADLINE_EXCEEDED, true), this.limits.idleTimeoutMs);
    this.idleTimer.unref();
  }

  private async onMessage(m: SessionRequest): Promise<void> {
    if (this.state === 'closed') return;
    this.touch();
    try {
      switch (m.kind?.$case) {
        case 'open': {
          if (this.state !== 'awaiting-open') throw new PreconditionError('open must be sent once, as the first message; given a second open');
          const o = m.kind.value;
          if (o.modelId && o.modelId !== this.engine.modelId) throw new PreconditionError(`open.modelId must be '${this.engine.modelId}' (the model served), given '${o.modelId}'`);
          this.clientId = o.clientId;
          this.admit(this); // throws CapacityError / NotReadyError
          this.cache = this.engine.newCache();
          this.state = 'open';
          this.log.debug({ sessionId: this.id, clientId: o.clientId, planEpoch: o.planEpoch }, 'session opened');
          this.call.write({ kind: { $case: 'opened', value: { sessionId: this.id, modelId: this.engine.modelId, stageCount: this.engine.stageCount, maxContextTokens: this.limits.maxContextTokens } } });
          return;
        }
        case 'step': {
          if (this.state !== 'open') throw new PreconditionError('the first message must be open, given step');
          this.traffic.messagesIn++;
          this.traffic.bytesIn += m.kind.value.input?.data.byteLength ?? 0;
          const step = this.validate(m.kind.value);
          const out = await this.scheduler.submit(this.id, step.begin, step.end, step.input, this.cache);
          if (!this.isOpen) return; // closed while the step ran
          const t = step.input.shape[1];
          for (let s = step.begin; s < step.end; s++) this.tokensAt[s] += t;
          const result: SessionResponse = step.sample
            ? { kind: { $case: 'result', value: { seq: step.seq, output: { $case: 'token', value: greedyToken(out.tensor as { data: Float32Array }, this.engine.vocabSize) }, computeMs: out.computeMs, queueMs: out.queueMs } } }
            : { kind: { $case: 'result', value: { seq: step.seq, output: { $case: 'tensor', value: toWireTensor(out.tensor) }, computeMs: out.computeMs, queueMs: out.queueMs } } };
          this.traffic.messagesOut++;
          this.traffic.bytesOut += result.kind?.$case === 'result' && result.kind.value.output?.$case === 'tensor' ? result.kind.value.output.value.data.byteLength : 8;
          this.call.write(result);
          return;
        }
        default:
          throw new ValidationError('message.kind must be open or step, given nothing');
      }
    } catch (err) {
      if (err instanceof SessionClosedError && !this.isOpen) return;
      const st = toGrpcStatus(err);
      if (st.code === status.INTERNAL) this.log.error({ err, sessionId: this.id }, 'step failed');
      else this.log.debug({ sessionId: this.id, code: st.code, details: st.details }, 'refused a message');
      this.close(st.details, st.code, true);
    }
  }

  private validate(step: Step): ValidStep {
    const n = this.engine.stageCount;
    if (step.seq <= this.lastSeq) throw new ValidationError(`step.seq must increase within a session (last ${this.lastSeq}), given ${step.seq}`);
    if (!(step.stageBegin < n)) throw new ValidationError(`step.stageBegin must be in 0..${n - 1}, given ${step.stageBegin}`);
    if (!(step.stageEnd > step.stageBegin && step.stageEnd <= n)) throw new ValidationError(`step.stageEnd must be in ${step.stageBegin + 1}..${n}, given ${step.stageEnd}`);
    if (step.sample && step.stageEnd !== n) throw new ValidationError(`step.sample must be false unless the range ends with the head (stageEnd ${n}), given true with stageEnd ${step.stageEnd}`);
    const input = fromWireTensor(step.input, 'step.input');
    const wantIds = step.stageBegin === 0;
    if (wantIds && input.dtype !== 'int64') throw new ValidationError('step.input.dtype must be DATA_TYPE_INT64 (token ids) for the embed stage, given DATA_TYPE_FLOAT32');
    if (!wantIds && input.dtype !== 'float32') throw new ValidationError(`step.input.dtype must be DATA_TYPE_FLOAT32 (hidden state) for stage ${step.stageBegin}, given DATA_TYPE_INT64`);
    const shape = input.shape;
    const okShape = wantIds ? shape.length === 2 && shape[0] === 1 && shape[1] >= 1 : shape.length === 3 && shape[0] === 1 && shape[1] >= 1 && shape[2] === this.engine.nEmbd;
    if (!okShape) throw new ValidationError(`step.input.shape must be ${wantIds ? '[1, T>=1]' : `[1, T>=1, ${this.engine.nEmbd}]`}, given [${shape.join(', ')}]`);
    if (wantIds) {
      for (const id of input.data as BigInt64Array) {
        if (id < 0n || id >= BigInt(this.engine.vocabSize)) throw new ValidationError(`step.input token ids must be in 0..${this.engine.vocabSize - 1}, given ${id}`);
      }
    }
    const t = shape[1];
    for (let s = step.stageBegin; s < step.stageEnd; s++) {
      if (this.tokensAt[s] + t > this.limits.maxContextTokens) {
        throw new PreconditionError(`step would make stage ${s} hold ${this.tokensAt[s] + t} tokens; the context must stay <= ${this.limits.maxContextTokens} tokens`);
      }
    }
    this.lastSeq = step.seq;
    return { seq: step.seq, begin: step.stageBegin, end: step.stageEnd, input, sample: step.sample };
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
  close(reason: string, code: status, sendStatus: boolean): void {
    if (this.state === 'closed') return;
    this.release(reason, code);
    if (sendStatus) this.call.emit('error', { code, details: reason });
  }

  private release(reason: string, code: status): void {
    this.state = 'closed';
    clearTimeout(this.idleTimer);
    const cache = this.cache;
    this.cache = undefined;
    void this.scheduler.cancelSession(this.id, new SessionClosedError(reason, code)).then(() => {
      if (cache !== undefined) this.engine.releaseCache(cache);
    });
    this.log.debug({ sessionId: this.id, reason }, 'session closed');
    this.resolveClosed();
  }
}
