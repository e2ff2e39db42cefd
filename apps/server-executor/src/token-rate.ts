import { quoted } from '@tandem/protocol';
import { sleep } from '@tandem/util';
import { CapacityError } from './errors';

/** A clock in milliseconds that never goes back (performance.now() in production, a counter in tests). */
export type Clock = () => number;

/**
 * A token bucket: holds up to `burst` tokens and refills at `ratePerS`. Work of `n` tokens
 * may start when the bucket holds min(n, burst) of them, and then takes all n: the level may
 * go below zero (a prompt longer than the burst still runs, alone, on a full bucket), and
 * that debt is repaid, at the rate, before anything else of the client starts. Over any
 * interval the tokens taken are at most burst + rate × seconds + one piece of work.
 */
export class TokenBucket {
  private level: number;
  private at: number;

  constructor(
    readonly ratePerS: number,
    readonly burst: number,
    private readonly now: Clock,
  ) {
    if (!(ratePerS > 0) || !(burst > 0)) throw new RangeError(`a token bucket needs a rate and a burst > 0, given ${ratePerS} and ${burst}`);
    this.level = burst;
    this.at = now();
  }

  private refill(): void {
    const t = this.now();
    if (t > this.at) this.level = Math.min(this.burst, this.level + ((t - this.at) * this.ratePerS) / 1000);
    this.at = t;
  }

  /** Tokens the bucket holds now (negative while a long piece of work is being repaid). */
  get tokens(): number {
    this.refill();
    return this.level;
  }

  /** Milliseconds until work of `tokens` may start (0: now). */
  waitMs(tokens: number): number {
    this.refill();
    const need = Math.min(tokens, this.burst);
    return this.level >= need ? 0 : ((need - this.level) * 1000) / this.ratePerS;
  }

  /** Takes `tokens` when work of that size may start now and returns 0; otherwise takes nothing and returns waitMs(tokens). */
  tryTake(tokens: number): number {
    const wait = this.waitMs(tokens);
    if (wait === 0) this.level -= tokens;
    return wait;
  }

  /** Milliseconds until the bucket is full again. */
  msUntilFull(): number {
    this.refill();
    return ((this.burst - this.level) * 1000) / this.ratePerS;
  }
}

/** A client went over EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT: RESOURCE_EXHAUSTED with the time until it fits. */
export class TokenRateError extends CapacityError {
  override name = 'TokenRateError';
  constructor(
    message: string,
    override readonly retryAfterMs: number,
  ) {
    super(message, retryAfterMs);
  }
}

interface Entry {
  readonly bucket: TokenBucket;
  /** Open sessions of the client. */
  sessions: number;
  /** Set while a bucket of a client without sessions waits to fill up before it is forgotten. */
  forget?: NodeJS.Timeout;
}

/**
 * EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT: one token bucket per client id (OpenSession.client_id)
 * with a burst of one second's worth, counting the positions the server computes for that
 * client: each split step's T input positions (a prompt's prefill, then one per decode step;
 * a placement with two server runs counts each token once per run) and each step of a
 * server-side generation the same way.
 * - A split step that does not fit is refused (TokenRateError) and nothing is taken: the
 *   session stays as it was and the client may send the step again after the hint.
 * - A server-side generation is admitted while the bucket is not empty, then paced: each
 *   of its steps waits until the bucket has room, so a running generation slows down to the
 *   rate rather than failing.
 * A client's bucket lives while it has sessions, and after its last one until it has filled
 * up again (closing every session does not reset it).
 */
export class ClientTokenRates {
  private readonly clients = new Map<string, Entry>();

  constructor(
    readonly ratePerS: number,
    private readonly now: Clock = () => performance.now(),
  ) {}

  /** Clients with a bucket (those with sessions, and those whose bucket is still refilling). */
  get size(): number {
    return this.clients.size;
  }

  /** A session of `clientId` opened. */
  acquire(clientId: string): void {
    let e = this.clients.get(clientId);
    if (!e) {
      e = { bucket: new TokenBucket(this.ratePerS, this.ratePerS, this.now), sessions: 0 };
      this.clients.set(clientId, e);
    }
    clearTimeout(e.forget);
    e.forget = undefined;
    e.sessions++;
  }

  /** A session of `clientId` closed: once the client has none and its bucket is full, the bucket is dropped. */
  release(clientId: string): void {
    const e = this.clients.get(clientId);
    if (!e || --e.sessions > 0) return;
    const check = (): void => {
      if (e.sessions > 0 || this.clients.get(clientId) !== e) return;
      const ms = e.bucket.msUntilFull();
      if (ms <= 0) {
        this.clients.delete(clientId);
        return;
      }
      e.forget = setTimeout(check, Math.ceil(ms));
      e.forget.unref();
    };
    check();
  }

  private bucket(clientId: string): TokenBucket {
    const e = this.clients.get(clientId);
    if (!e) throw new Error(`no session of client ${quoted(clientId, 64)} is open`);
    return e.bucket;
  }

  private refusal(clientId: string, what: string, waitMs: number): TokenRateError {
    const b = this.bucket(clientId);
    const ms = Math.max(1, Math.ceil(waitMs));
    return new TokenRateError(
      `tokens of client ${quoted(clientId, 64)} must stay <= ${this.ratePerS} per second (EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT, a burst of ${b.burst}): ` +
        `${what}, and ${Math.max(0, Math.floor(b.tokens))} are left; retry after ${ms} ms`,
      ms,
    );
  }

  /** A split step of `tokens` positions: takes them, or refuses. @throws TokenRateError (nothing taken) when they do not fit now. */
  step(clientId: string, tokens: number, what: string): void {
    const wait = this.bucket(clientId).tryTake(tokens);
    if (wait > 0) throw this.refusal(clientId, `${what} brings ${tokens} tokens`, wait);
  }

  /** Admission of a server-side generation (nothing taken: its steps are paced). @throws TokenRateError when the bucket is empty. */
  admitGeneration(clientId: string, what: string): void {
    const wait = this.bucket(clientId).waitMs(1);
    if (wait > 0) throw this.refusal(clientId, `${what} needs a token to start`, wait);
  }

  /**
   * Waits until a step of `tokens` fits, then takes them (one step of a server-side generation).
   * Resolves false, taking nothing, when `signal` aborts first (the session closed).
   */
  async pace(clientId: string, tokens: number, signal: AbortSignal): Promise<boolean> {
    const b = this.bucket(clientId);
    for (;;) {
      if (signal.aborted) return false;
      const wait = b.tryTake(tokens);
      if (wait === 0) return true;
      // An abort ends the wait; the loop then sees it.
      await sleep(Math.ceil(wait), signal).catch(() => undefined);
    }
  }
}
