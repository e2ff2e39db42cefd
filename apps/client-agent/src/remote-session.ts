import type { ClientDuplexStream, ServiceError } from '@grpc/grpc-js';
import { fromWireTensor, toWireTensor, type ExecutorServiceClient, type HostTensor, type SessionOpened, type SessionRequest, type SessionResponse } from '@tandem/protocol';

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

interface Pending {
  readonly resolve: (m: SessionResponse) => void;
  readonly reject: (e: Error) => void;
}

/**
 * One split session on the executor, seen from the client: open, then steps answered in
 * order. Any error fails every pending step with the executor's status. `end()` closes
 * the stream cleanly; `cancel()` aborts it (the executor frees the session at once).
 */
export class RemoteSession {
  private readonly pending: Pending[] = [];
  private failure: Error | undefined;
  private seq = 0;
  opened: SessionOpened | undefined;

  private constructor(private readonly call: ClientDuplexStream<SessionRequest, SessionResponse>) {
    call.on('data', (m: SessionResponse) => this.pending.shift()?.resolve(m));
    call.on('error', (e: ServiceError) => this.fail(e));
    call.on('end', () => this.fail(new Error('the executor ended the session')));
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const p of this.pending.splice(0)) p.reject(this.failure);
  }

  private send(req: SessionRequest): Promise<SessionResponse> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<SessionResponse>((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.call.write(req);
    });
  }

  /** Opens a session. Rejects with the executor's status (e.g. RESOURCE_EXHAUSTED). */
  static async open(client: ExecutorServiceClient, opts: { clientId: string; planEpoch: number; modelId: string; deadlineMs: number }): Promise<RemoteSession> {
    const s = new RemoteSession(client.session({ deadline: Date.now() + opts.deadlineMs }));
    const m = await s.send({ kind: { $case: 'open', value: { clientId: opts.clientId, planEpoch: opts.planEpoch, modelId: opts.modelId } } });
    if (m.kind?.$case !== 'opened') throw new Error(`executor answered open with ${m.kind?.$case ?? 'nothing'}`);
    s.opened = m.kind.value;
    return s;
  }

  /** Runs stages [begin, end) on the server. */
  async step(begin: number, end: number, input: HostTensor, sample: boolean): Promise<RemoteStepResult> {
    const seq = ++this.seq;
    const t0 = performance.now();
    const m = await this.send({ kind: { $case: 'step', value: { seq, stageBegin: begin, stageEnd: end, input: toWireTensor(input), sample } } });
    const roundTripMs = performance.now() - t0;
    if (m.kind?.$case !== 'result' || m.kind.value.seq !== seq) throw new Error(`executor answered step ${seq} with ${m.kind?.$case ?? 'nothing'}`);
    const r = m.kind.value;
    if (r.output?.$case === 'token') return { output: r.output.value, computeMs: r.computeMs, queueMs: r.queueMs, roundTripMs, downBytes: 8 };
    if (r.output?.$case !== 'tensor') throw new Error(`executor answered step ${seq} with no output`);
    return { output: fromWireTensor(r.output.value, 'result.tensor'), computeMs: r.computeMs, queueMs: r.queueMs, roundTripMs, downBytes: r.output.value.data.byteLength };
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
