import * as grpc from '@grpc/grpc-js';
import { toWireTensor, type HostTensor, type SessionRequest, type SessionResponse } from '@tandem/protocol';
import { withTimeout } from '@tandem/testkit';

/** Int64 token ids [1, T]. */
export const ids = (...v: number[]): HostTensor => ({ dtype: 'int64', shape: [1, v.length], data: BigInt64Array.from(v, BigInt) });

/** A session stream driven message by message, collecting answers and the final status. */
export class TestSession {
  readonly answers: SessionResponse[] = [];
  /** The final status: an OK status object, or the error the stream ended with. */
  readonly ended: Promise<grpc.StatusObject | grpc.ServiceError>;
  private waiters: (() => void)[] = [];
  private done = false;
  constructor(readonly call: grpc.ClientDuplexStream<SessionRequest, SessionResponse>) {
    call.on('data', (m: SessionResponse) => {
      this.answers.push(m);
      this.waiters.splice(0).forEach((w) => w());
    });
    this.ended = new Promise((resolve) => {
      call.on('error', (e: grpc.ServiceError) => {
        this.done = true;
        resolve(e);
        this.waiters.splice(0).forEach((w) => w());
      });
      call.on('status', (s: grpc.StatusObject) => {
        if (s.code === grpc.status.OK) {
          this.done = true;
          resolve(s);
          this.waiters.splice(0).forEach((w) => w());
        }
      });
    });
  }
  /** The n-th answer (1-based), waiting up to `timeoutMs` for it. */
  async next(n: number, timeoutMs = 10_000): Promise<SessionResponse> {
    const arrived = async (): Promise<void> => {
      while (this.answers.length < n && !this.done) await new Promise<void>((resolve) => this.waiters.push(resolve));
    };
    await withTimeout(arrived(), timeoutMs, `answer ${n}`);
    if (this.answers.length < n) throw new Error('stream ended early');
    return this.answers[n - 1];
  }
  open(modelId = '', clientId = 't', isPrivate = false): void {
    this.call.write({ kind: { $case: 'open', value: { clientId, planEpoch: '0', modelId, ...(isPrivate ? { private: true } : {}) } } });
  }
  step(seq: number | string, begin: number, end: number, input: HostTensor, sample = false): void {
    this.call.write({ kind: { $case: 'step', value: { seq: String(seq), stageBegin: begin, stageEnd: end, input: toWireTensor(input), sample } } });
  }
  generate(seq: number | string, input: HostTensor, maxNewTokens: number): void {
    this.call.write({ kind: { $case: 'generate', value: { seq: String(seq), input: toWireTensor(input), maxNewTokens } } });
  }
  /** Hands `tokens` positions of stage `stage`'s state to the server, from `offset` (key and value for an attention stage). */
  kvPut(stage: number, offset: number, tokens: number, key?: HostTensor, value?: HostTensor): void {
    this.call.write({
      kind: { $case: 'kvPut', value: { stage, offset, tokens, key: key ? toWireTensor(key) : undefined, value: value ? toWireTensor(value) : undefined } },
    });
  }
  /** Asks for stage `stage`'s state (answered by KvChunks). */
  kvTake(seq: number | string, stage: number, maxChunkBytes = 0): void {
    this.call.write({ kind: { $case: 'kvTake', value: { seq: String(seq), stage, maxChunkBytes } } });
  }
  /** The tokens of a server-side generation received so far, in arrival order (seq as a number: tests use small ones). */
  tokens(): { seq: number; index: number; token: number; computeMs: number; queueMs: number; last: boolean }[] {
    return this.answers.flatMap((m) => (m.kind?.$case === 'token' ? [{ ...m.kind.value, seq: Number(m.kind.value.seq) }] : []));
  }
}
