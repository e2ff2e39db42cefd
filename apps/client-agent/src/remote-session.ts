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
import { concatPositions, slicePositions, type Float32Tensor, type StageState } from '@tandem/model';
import { ExecutorStatusError } from './errors';

/** What one server step returned. */
export interface RemoteStepResult {
  /** The hidden state or logits, or the sampled token when the step ended with the head and sample was set. */
  readonly output: HostTensor | number;
  readonly computeMs: number;
  readonly queueMs: number;
  /** The step's service time on the server (StepResult.service_ms; its compute from older executors), ms. */
  readonly serviceMs: number;
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

/** Largest key plus value bytes the agent puts in one KvPut (the proto's bound for Tandem's agent). */
export const KV_CHUNK_BYTES = 1 << 20;

/** Positions per chunk so that a chunk's keys plus values (float32) take at most `maxBytes`; at least one whatever the bound. */
export function kvChunkTokens(nHead: number, headDim: number, maxBytes: number): number {
  return Math.max(1, Math.floor(maxBytes / (2 * 4 * nHead * headDim)));
}

/** A stage's state taken from the executor (kv_take), and what it cost on the wire. */
export interface TakenState {
  readonly state: StageState;
  /** Key and value bytes received. */
  readonly bytes: number;
  readonly chunks: number;
}

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

/** An answer awaited, in order: `accept` takes each message until it returns true (a kv_take's answer is several). */
interface Pending {
  readonly accept: (m: SessionResponse) => boolean;
  readonly reject: (e: Error) => void;
}

/**
 * One session on the executor, seen from the client: open, then either steps answered in
 * order (a split generation) or one `generate` whose tokens stream back (every stage on the
 * server). A phased plan moves stages' states between its prefill and its decode with
 * `kvPut` and `kvTake` (in order with the steps), and may then `generate` the decode on the
 * server. Any error fails every pending step, or the generation, with the executor's
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
      else {
        const p = this.pending[0];
        if (!p) {
          this.fail(new Error(`executor sent ${m.kind?.$case ?? 'an empty message'} when no answer was due`));
          this.call.cancel();
        } else if (p.accept(m)) this.pending.shift();
      }
    });
    call.on('error', (e: ServiceError) => this.fail(e));
    call.on('end', () => this.fail(new Error('the executor ended the session')));
  }

  /** What ended the session (the first error seen), or undefined while it lives. */
  get failed(): Error | undefined {
    return this.failure;
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
      this.pending.push({
        accept: (m) => {
          resolve(m);
          return true;
        },
        reject,
      });
      this.call.write(req);
    });
  }

  /** Fails the session with a protocol error of the executor's answers, and cancels the stream. */
  private breach(message: string): Error {
    const e = new Error(message);
    this.fail(e);
    this.call.cancel();
    return e;
  }

  /**
   * Hands `stage`'s state to the server between the phases of a phased plan (the stage runs on
   * the server in the decode): one KvPut for a count-only stage, otherwise chunks of whole
   * positions of at most `maxChunkBytes` of keys plus values (at least one position each).
   * Not answered: the executor takes them in order, and a refusal ends the session (the next
   * step or generate rejects with its status). Returns the key and value bytes sent.
   */
  kvPut(stage: number, state: StageState, maxChunkBytes = KV_CHUNK_BYTES): number {
    if (this.failure) throw this.failure;
    const { key, value, tokens } = state;
    if (!key || !value) {
      this.call.write({ kind: { $case: 'kvPut', value: { stage, offset: 0, tokens, key: undefined, value: undefined } } });
      return 0;
    }
    const [, H, T, hd] = key.shape;
    if (T !== tokens) throw new Error(`kvPut: stage ${stage}'s keys hold ${T} positions, its state counts ${tokens}`);
    const per = kvChunkTokens(H, hd, maxChunkBytes);
    let bytes = 0;
    for (let offset = 0; offset < T; offset += per) {
      const n = Math.min(per, T - offset);
      const k = slicePositions(key, offset, offset + n);
      const v = slicePositions(value, offset, offset + n);
      bytes += k.data.byteLength + v.data.byteLength;
      this.call.write({ kind: { $case: 'kvPut', value: { stage, offset, tokens: n, key: toWireTensor(k), value: toWireTensor(v) } } });
    }
    return bytes;
  }

  /**
   * Takes `stage`'s state from the server between the phases of a phased plan (the stage runs
   * on the client in the decode): the executor answers, in order with the steps, with KvChunks
   * covering positions 0..N-1 (at most `maxChunkBytes` of keys plus values each; 0 is the
   * executor's default, 1 MiB), then holds nothing of the stage. Resolves with the state joined.
   * A chunk out of order (another seq or stage, a gap, keys of the wrong shape) fails the session.
   */
  kvTake(stage: number, maxChunkBytes = 0): Promise<TakenState> {
    if (this.failure) return Promise.reject(this.failure);
    const seq = String(++this.seq);
    return new Promise<TakenState>((resolve, reject) => {
      let tokens = 0;
      let bytes = 0;
      let chunks = 0;
      const keys: Float32Tensor[] = [];
      const values: Float32Tensor[] = [];
      const accept = (m: SessionResponse): boolean => {
        if (m.kind?.$case !== 'kvChunk') {
          reject(this.breach(`executor answered kv_take ${seq} with ${m.kind?.$case ?? 'nothing'}`));
          return true;
        }
        const c = m.kind.value;
        if (c.seq !== seq || c.stage !== stage || c.offset !== tokens || c.tokens < 1) {
          reject(
            this.breach(
              `executor answered kv_take ${seq} of stage ${stage} with chunk {seq ${c.seq}, stage ${c.stage}, offset ${c.offset}, tokens ${c.tokens}}, expected offset ${tokens}`,
            ),
          );
          return true;
        }
        if (c.key || c.value) {
          let k: HostTensor;
          let v: HostTensor;
          try {
            k = fromWireTensor(c.key, 'kv_chunk.key');
            v = fromWireTensor(c.value, 'kv_chunk.value');
          } catch (err) {
            reject(this.breach(`executor answered kv_take ${seq} with a bad chunk: ${(err as Error).message}`));
            return true;
          }
          const shapeOk = (t: HostTensor): t is Float32Tensor =>
            t.dtype === 'float32' &&
            t.shape.length === 4 &&
            t.shape[2] === c.tokens &&
            (keys.length === 0 || (t.shape[1] === keys[0].shape[1] && t.shape[3] === keys[0].shape[3]));
          if (!shapeOk(k) || !shapeOk(v) || k.shape.join() !== v.shape.join()) {
            reject(
              this.breach(
                `executor answered kv_take ${seq} with keys ${k.shape.join('x')} and values ${v.shape.join('x')}, expected float32 [1, H, ${c.tokens}, hd] alike`,
              ),
            );
            return true;
          }
          keys.push(k);
          values.push(v);
          bytes += k.data.byteLength + v.data.byteLength;
        } else if (keys.length > 0) {
          reject(this.breach(`executor answered kv_take ${seq} with a chunk without keys after chunks with them`));
          return true;
        }
        tokens += c.tokens;
        chunks++;
        if (!c.last) return false;
        const state: StageState = keys.length > 0 ? { tokens, key: concatPositions(keys), value: concatPositions(values) } : { tokens };
        resolve({ state, bytes, chunks });
        return true;
      };
      this.pending.push({ accept, reject });
      this.call.write({ kind: { $case: 'kvTake', value: { seq, stage, maxChunkBytes } } });
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
    const serviceMs = r.serviceMs > 0 ? r.serviceMs : r.computeMs;
    if (r.output?.$case === 'token')
      return { output: r.output.value, computeMs: r.computeMs, queueMs: r.queueMs, serviceMs, roundTripMs, downBytes: TOKEN_DOWN_BYTES };
    if (r.output?.$case !== 'tensor') throw new Error(`executor answered step ${seq} with no output`);
    return {
      output: fromWireTensor(r.output.value, 'result.tensor'),
      computeMs: r.computeMs,
      queueMs: r.queueMs,
      serviceMs,
      roundTripMs,
      downBytes: r.output.value.data.byteLength,
    };
  }

  /**
   * Runs the whole generation on the server: one upload of the prompt (int64 ids [1, T]),
   * then `onToken` for each token, in order, as it arrives. After a phased plan's prefill was
   * handed over (every stage on the server holds the history), `prompt` is the prefill's token
   * [1, 1] and the server decodes on from there (indices again from 0). Resolves after the last one;
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
