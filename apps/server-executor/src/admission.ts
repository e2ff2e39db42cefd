import type { Metadata, status } from '@grpc/grpc-js';
import { quoted } from '@tandem/protocol';
import { checkIdentity, type TokenTable } from '@tandem/service-kit';
import { CapacityError, NotReadyError } from './errors';
import type { KvBudget } from './kv-budget';
import type { ExecutorServerOptions } from './executor-server';
import type { ClientTokenRates } from './token-rate';

/**
 * What the executor admits and may end: a split session, or one Open Inference Protocol call
 * (OipService) while it runs. `close` ends it with `code` and `reason` (sending that status
 * when `sendStatus` and the work answers a stream of its own).
 */
export interface AdmittedWork {
  readonly clientId: string;
  close(reason: string, code: status, sendStatus: boolean): void;
}

/**
 * The limits a session is admitted under; a session opens only while one more token's KV cache
 * (`kvBytesPerToken`, over every stage) fits, and with `tokens` only under its caller's own client id.
 */
type AdmissionLimits = Pick<ExecutorServerOptions, 'maxSessions' | 'maxSessionsPerClient' | 'retryAfterMs'> & {
  readonly kvBytesPerToken: number;
  readonly tokens?: TokenTable;
};

/**
 * Which sessions are open, and whether one more may open: sessions ask on their `open` and leave
 * when they close; the server reads who is open and may refuse every later open (draining, a
 * failed engine). `M` is the session as the server knows it.
 */
export class Admission<M extends { readonly clientId: string }> {
  private readonly open = new Set<M>();
  /** Open sessions per client id (EXECUTOR_MAX_SESSIONS_PER_CLIENT). */
  private readonly perClient = new Map<string, number>();
  /** Why no session may open any more, once that is so. */
  private refusal: string | undefined;
  private admitted = 0;

  constructor(
    private readonly limits: AdmissionLimits,
    private readonly kv: KvBudget,
    private readonly rates?: ClientTokenRates,
  ) {}

  /** The sessions open now. */
  get members(): ReadonlySet<M> {
    return this.open;
  }
  /** Sessions admitted since start. */
  get opened(): number {
    return this.admitted;
  }

  /** Refuses every later open with NotReadyError (UNAVAILABLE) saying `reason`. */
  refuse(reason: string): void {
    this.refusal = reason;
  }

  /**
   * Admits `m`, whose call came with `metadata`.
   * @throws NotReadyError once refused; AuthError (PERMISSION_DENIED) for a client id not its token's;
   *   CapacityError (RESOURCE_EXHAUSTED, with a retry hint) when a limit is reached.
   */
  admit(m: M, metadata: Metadata): void {
    const { tokens, maxSessions } = this.limits;
    // The interceptor let the call in, so the metadata authenticates; this learns who.
    if (tokens) checkIdentity(tokens.authenticate(metadata), 'open.client_id', m.clientId);
    if (this.refusal !== undefined) throw new NotReadyError(this.refusal);
    const retryAfterMs = this.limits.retryAfterMs ?? 1000;
    if (this.open.size >= maxSessions)
      throw new CapacityError(`open sessions must stay <= ${maxSessions} (EXECUTOR_MAX_SESSIONS), given one more`, retryAfterMs);
    const perClient = this.limits.maxSessionsPerClient ?? 0;
    const held = this.perClient.get(m.clientId) ?? 0;
    if (perClient > 0 && held >= perClient) {
      throw new CapacityError(
        `open sessions of client ${quoted(m.clientId, 64)} must stay <= ${perClient} (EXECUTOR_MAX_SESSIONS_PER_CLIENT), given one more; retry after ${retryAfterMs} ms or when one of its sessions ends`,
        retryAfterMs,
      );
    }
    if (!this.kv.hasRoom(this.limits.kvBytesPerToken)) {
      throw new CapacityError(
        `the KV cache must stay <= ${this.kv.limitBytes} bytes (EXECUTOR_MAX_KV_BYTES) and ${this.kv.usedBytes} are in use by ${this.open.size} open sessions: not one more token fits, retry later`,
        retryAfterMs,
      );
    }
    this.open.add(m);
    this.perClient.set(m.clientId, held + 1);
    this.rates?.acquire(m.clientId);
    this.admitted++;
  }

  /** `m` closed (nothing when it was never admitted). */
  leave(m: M): void {
    if (!this.open.delete(m)) return;
    this.rates?.release(m.clientId);
    const n = (this.perClient.get(m.clientId) ?? 1) - 1;
    if (n > 0) this.perClient.set(m.clientId, n);
    else this.perClient.delete(m.clientId);
  }
}
