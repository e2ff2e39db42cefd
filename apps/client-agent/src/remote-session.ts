import { status, type ClientDuplexStream, type ServiceError } from '@grpc/grpc-js';
import {
  fromWireTensor,
  retryAfterMsOf,
  toWireTensor,
  type ExecutorServiceClient,
  type HostTensor,
  type SessionOpened,
  type SessionRequest,
  type SessionResponse,
} from '@tandem/protocol';
import { ExecutorStatusError } from './errors';

/** What one server step returned. */
export interface RemoteStepResult {
  /** The hidden state or logits, or the sampled token when the step ended with the head and sample was set. */
  readonly output: HostTensor | number;
  readonly computeMs: number;
  readonly queueMs: number;
  /** Wall time from sending to receiving, ms. */
  readonly roundTripMs: number;
  readonly downBytes: number;
}

/**
 * Work the executor refused with a retry hint (RESOURCE_EXHAUSTED: the client's tokens per
 * second) whose hint the deadline left no room to wait out. Carries gRPC's RESOURCE_EXHAUSTED
 * and the executor's message, so the agent passes it through.
 */
export class RefusedError extends ExecutorStatusError {
  override name = 'RefusedError';
  constructor(
    details: string,
    readonly retryAfterMs: number,
  ) {
    super(status.RESOURCE_EXHAUSTED, details);
  }
}

/** A split step refused without ending the session (StepRefused). */
export class StepRefusedError extends RefusedError {
  override name = 'StepRefusedError';
}

/** A server-side generation refused at its start (the refusal ended its session; nothing of it ran). */
export class GenerateRefusedError extends RefusedError {
  override name = 'GenerateRefusedError';
}

/** Time a refused step or generation must leave before the deadline after waiting its hint, or it is not sent again, ms. */
export const REFUSAL_MARGIN_MS = 100;

/**
 * The hint of an executor's refusal that waiting may cure: RESOURCE_EXHAUSTED with the
 * trailer `retry-after-ms`, in ms; undefined for any other error.
 */
export function refusalHintOf(err: unknown): number | undefined {
  const e = err as Partial<ServiceError> | undefined;
  return e?.code === status.RESOURCE_EXHAUSTED ? retryAfterMsOf(e.metadata) : undefined;
}

/** Bytes a token is counted as on the downlink (emulation and link estimates). */
export const TOKEN_DOWN_BYTES = 8;

/** One token of a server-side generation, as it arrives. */
export interface RemoteToken {
  /** 0 for the prefill's token, then 1, 2, ... */
  readonly index: number;
  readonly token: number;
  /** Server compute of the step that made it, ms. */
  readonly computeMs: number;
  /** Time that step waited for the engine, ms. */
  readonly queueMs: number;
  readonly last: boolean;
}

/** The server-side generation in progress, if any. */
interface Stream {
  readonly seq: string;
  next: number;
  readonly onToken: (t: RemoteToken) => void;
  readonly resolve: () => void;
  readonly reject: (e: Error) => void;
}

interface Pending {
  readonly resolve: (m: SessionResponse) => void;
  readonly reject: (e: Error) => void;
}

/**
 * One session on the executor, seen from the client: open, then either steps answered in
 * order (a split generation) or one `generate` whose tokens stream back (every stage on the
 * server). Any error fails every pending step, or the generation, with the executor's
 * status. `end()` closes the stream cleanly; `cancel()` aborts it (the executor frees the
 * session at once).
 */
export class RemoteSession {
  private readonly pending: Pending[] = [];
  private failure: Error | undefined;
  private seq = 0;
  private stream: Stream | undefined;
  /** Wakes a step waiting out a refusal's hint when the session fails. */
  private readonly wakers = new Set<() => void>();
  opened: SessionOpened | undefined;
  /** Steps the executor refused and this session sent again after the hint. */
  refusals = 0;

  /** @param deadline the session's gRPC deadline (Date.now() ms): the generation's own. */
  private constructor(
    private readonly call: ClientDuplexStream<SessionRequest, SessionResponse>,
    readonly deadline: number,
  ) {
    call.on('data', (m: SessionResponse) => {
      if (m.kind?.$case === 'token') this.onToken(m.kind.value);
      else this.pending.shift()?.resolve(m);
    });
    call.on('error', (e: ServiceError) => this.fail(e));
    call.on('end', () => this.fail(new Error('the executor ended the session')));
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const p of this.pending.splice(0)) p.reject(this.failure);
    for (const w of this.wakers) w();
    const s = this.stream;
    this.stream = undefined;
    s?.reject(this.failure);
  }

  private onToken(t: RemoteToken & { seq: string }): void {
    const s = this.stream;
    if (!s || t.seq !== s.seq || t.index !== s.next) {
      this.fail(new Error(`executor sent token ${t.index} of generate ${t.seq}, expected ${s ? `token ${s.next} of generate ${s.seq}` : 'no token'}`));
      this.call.cancel();
      return;
    }
    s.next++;
    try {
      s.onToken({ index: t.index, token: t.token, computeMs: t.computeMs, queueMs: t.queueMs, last: t.last });
    } catch (err) {
      this.fail(err as Error);
      this.call.cancel();
      return;
    }
    if (t.last) {
      this.stream = undefined;
      s.resolve();
    }
  }

  private send(req: SessionRequest): Promise<SessionResponse> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<SessionResponse>((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.call.write(req);
    });
  }

  /**
   * Opens a session whose gRPC call carries `deadline` (Date.now() ms: the generation's own,
   * so the executor stops working for a caller that has given up). Rejects with the
   * executor's status (e.g. RESOURCE_EXHAUSTED).
   */
  static async open(
    client: ExecutorServiceClient,
    opts: { clientId: string; planEpoch: number; modelId: string; deadline: number; private?: boolean },
  ): Promise<RemoteSession> {
    const s = new RemoteSession(client.session({ deadline: opts.deadline }), opts.deadline);
    const open = { clientId: opts.clientId, planEpoch: String(opts.planEpoch), modelId: opts.modelId, ...(opts.private ? { private: true } : {}) };
    const m = await s.send({ kind: { $case: 'open', value: open } });
    if (m.kind?.$case !== 'opened') throw new Error(`executor answered open with ${m.kind?.$case ?? 'nothing'}`);
    s.opened = m.kind.value;
    return s;
  }

  /**
   * Runs stages [begin, end) on the server. A step the executor refuses (StepRefused: over the
   * client's tokens per second) is sent again after its hint while the session's deadline
   * leaves room; otherwise it fails with StepRefusedError (RESOURCE_EXHAUSTED).
   */
  async step(begin: number, end: number, input: HostTensor, sample: boolean): Promise<RemoteStepResult> {
    const seq = String(++this.seq);
    const wire = toWireTensor(input);
    let t0: number;
    let m: SessionResponse;
    for (;;) {
      t0 = performance.now();
      m = await this.send({ kind: { $case: 'step', value: { seq, stageBegin: begin, stageEnd: end, input: wire, sample } } });
      if (m.kind?.$case !== 'refused' || m.kind.value.seq !== seq) break;
      const { message, retryAfterMs } = m.kind.value;
      const left = this.deadline - Date.now();
      if (left < retryAfterMs + REFUSAL_MARGIN_MS)
        throw new StepRefusedError(`${message} (the deadline is ${Math.max(0, Math.round(left))} ms away)`, retryAfterMs);
      this.refusals++;
      await this.pause(retryAfterMs);
    }
    const roundTripMs = performance.now() - t0;
    if (m.kind?.$case !== 'result' || m.kind.value.seq !== seq) throw new Error(`executor answered step ${seq} with ${m.kind?.$case ?? 'nothing'}`);
    const r = m.kind.value;
    if (r.output?.$case === 'token') return { output: r.output.value, computeMs: r.computeMs, queueMs: r.queueMs, roundTripMs, downBytes: TOKEN_DOWN_BYTES };
    if (r.output?.$case !== 'tensor') throw new Error(`executor answered step ${seq} with no output`);
    return {
      output: fromWireTensor(r.output.value, 'result.tensor'),
      computeMs: r.computeMs,
      queueMs: r.queueMs,
      roundTripMs,
      downBytes: r.output.value.data.byteLength,
    };
  }

  /**
   * Runs the whole generation on the server: one upload of the prompt (int64 ids [1, T]),
   * then `onToken` for each token, in order, as it arrives. Resolves after the last one;
   * rejects with the executor's status (or CANCELLED after `cancel()`). A refusal at its start
   * ends the session: see {@link refusalHintOf} for whether a new one may try again.
   */
  generate(prompt: HostTensor, maxNewTokens: number, onToken: (t: RemoteToken) => void): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.stream) return Promise.reject(new Error('a generation is already running on this session'));
    const seq = String(++this.seq);
    return new Promise<void>((resolve, reject) => {
      this.stream = { seq, next: 0, onToken, resolve, reject };
      this.call.write({ kind: { $case: 'generate', value: { seq, input: toWireTensor(prompt), maxNewTokens } } });
    });
  }

  /** Resolves after `ms`, or at once when the session fails (the next send then rejects). */
  private pause(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const wake = (): void => {
        clearTimeout(t);
        this.wakers.delete(wake);
        resolve();
      };
      const t = setTimeout(wake, ms);
      this.wakers.add(wake);
      if (this.failure) wake();
    });
  }

  /** Half-closes the stream: the executor ends the session and frees its cache. */
  end(): void {
    if (!this.failure) this.call.end();
    this.failure ??= new Error('session ended');
  }

  /** Cancels the stream (the executor sees CANCELLED and frees the session). */
  cancel(): void {
    this.call.cancel();
  }
}
