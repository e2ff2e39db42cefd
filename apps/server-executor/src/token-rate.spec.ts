import { loadConfig } from './config';
import { CapacityError, toGrpcStatus } from './errors';
import { ClientTokenRates, TokenBucket, TokenRateError } from './token-rate';

/** A clock the test moves by hand, ms. */
function manualClock(): { now: () => number; advance: (ms: number) => void } {
  let t = 1000;
  return {
    now: () => t,
    advance: (ms) => {
      t += ms;
    },
  };
}

describe('token bucket (EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT)', () => {
  it('starts full with a burst of one second and refills at the rate, never beyond the burst', () => {
    const c = manualClock();
    const b = new TokenBucket(100, 100, c.now);
    expect(b.tokens).toBe(100);
    expect(b.tryTake(60)).toBe(0);
    expect(b.tokens).toBe(40);
    c.advance(100); // 10 tokens
    expect(b.tokens).toBe(50);
    c.advance(10_000);
    expect(b.tokens).toBe(100);
  });

  it('refuses work that does not fit, takes nothing, and says how long until it fits', () => {
    const c = manualClock();
    const b = new TokenBucket(50, 50, c.now);
    expect(b.tryTake(45)).toBe(0);
    // 5 left; 25 more need 20 → 400 ms at 50/s
    expect(b.tryTake(25)).toBeCloseTo(400);
    expect(b.tokens).toBe(5);
    c.advance(399);
    expect(b.tryTake(25)).toBeGreaterThan(0);
    c.advance(1);
    expect(b.tryTake(25)).toBe(0);
    expect(b.tokens).toBeCloseTo(0);
  });

  it('lets work longer than the burst start on a full bucket, and the debt is repaid before anything else starts', () => {
    const c = manualClock();
    const b = new TokenBucket(10, 10, c.now);
    expect(b.waitMs(25)).toBe(0); // needs min(25, burst) = 10: a full bucket
    expect(b.tryTake(25)).toBe(0);
    expect(b.tokens).toBe(-15);
    // one decode token needs the level back at 1: 16 tokens at 10/s
    expect(b.waitMs(1)).toBeCloseTo(1600);
    c.advance(1600);
    expect(b.tryTake(1)).toBe(0);
    // a long prompt waits for a full bucket, not for its whole length
    expect(b.waitMs(1000)).toBeCloseTo(1000);
  });

  it('holds the rate over time: a greedy taker gets burst + rate × seconds', () => {
    const c = manualClock();
    const b = new TokenBucket(20, 20, c.now);
    let taken = 0;
    for (let ms = 0; ms <= 5000; ms += 7) {
      while (b.tryTake(1) === 0) taken++;
      c.advance(7);
    }
    expect(taken).toBeGreaterThanOrEqual(20 + 20 * 5 - 1);
    expect(taken).toBeLessThanOrEqual(20 + 20 * 5.007 + 1);
  });

  it('tells how long until it is full, and refuses a rate or burst of 0', () => {
    const c = manualClock();
    const b = new TokenBucket(4, 4, c.now);
    b.tryTake(3);
    expect(b.msUntilFull()).toBeCloseTo(750);
    expect(() => new TokenBucket(0, 1, c.now)).toThrow(RangeError);
  });
});

describe('client token rates', () => {
  it('keeps a bucket per client: one client over the rate is refused with RESOURCE_EXHAUSTED naming it, the limit, the rate and the hint; another is not', () => {
    const c = manualClock();
    const r = new ClientTokenRates(50, c.now);
    r.acquire('dev-a');
    r.acquire('dev-b');
    r.step('dev-a', 40, 'step seq 1');
    let err: unknown;
    try {
      r.step('dev-a', 30, 'step seq 2');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(TokenRateError);
    expect(err).toBeInstanceOf(CapacityError);
    const e = err as TokenRateError;
    expect(e.message).toBe(
      "tokens of client 'dev-a' must stay <= 50 per second (EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT, a burst of 50): step seq 2 brings 30 tokens, and 10 are left; retry after 400 ms",
    );
    expect(e.retryAfterMs).toBe(400);
    const st = toGrpcStatus(e);
    expect(st.code).toBe(8); // RESOURCE_EXHAUSTED
    expect(st.metadata?.get('retry-after-ms')).toEqual(['400']);
    // the refused step took nothing
    c.advance(400);
    r.step('dev-a', 30, 'step seq 2');
    // dev-b has its own bucket
    r.step('dev-b', 50, 'step seq 1');
  });

  it('admits a server-side generation unless the bucket is empty, then paces its steps to the rate', async () => {
    jest.useFakeTimers();
    try {
      const r = new ClientTokenRates(200, () => Date.now()); // Date.now follows the fake timers
      r.acquire('dev-g');
      r.admitGeneration('dev-g', 'generate seq 1');
      const ac = new AbortController();
      expect(await r.pace('dev-g', 200, ac.signal)).toBe(true); // the burst, at once
      expect(() => r.admitGeneration('dev-g', 'generate seq 2')).toThrow(
        new TokenRateError(
          "tokens of client 'dev-g' must stay <= 200 per second (EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT, a burst of 200): generate seq 2 needs a token to start, and 0 are left; retry after 5 ms",
          5,
        ),
      );
      // 10 decode steps at 200/s: each waits 5 ms
      const t0 = Date.now();
      let paced = 0;
      const loop = (async () => {
        for (let i = 0; i < 10; i++) if (await r.pace('dev-g', 1, ac.signal)) paced++;
        return Date.now();
      })();
      await jest.advanceTimersByTimeAsync(24);
      expect(paced).toBe(4);
      await jest.advanceTimersByTimeAsync(100);
      expect(paced).toBe(10);
      expect((await loop) - t0).toBe(50);
      // a session that closes while pacing stops waiting and takes nothing
      const waiting = r.pace('dev-g', 100, ac.signal);
      ac.abort();
      expect(await waiting).toBe(false);
      await jest.advanceTimersByTimeAsync(500);
      expect(await r.pace('dev-g', 100, new AbortController().signal)).toBe(true);
    } finally {
      jest.useRealTimers();
    }
  });

  it('forgets a client once it has no session and its bucket is full again, not before (closing does not reset it)', () => {
    jest.useFakeTimers();
    try {
      const c = manualClock();
      const r = new ClientTokenRates(10, c.now);
      r.acquire('dev-a');
      r.acquire('dev-a');
      r.step('dev-a', 10, 'step seq 1');
      r.release('dev-a');
      r.release('dev-a');
      expect(r.size).toBe(1);
      r.acquire('dev-a'); // reopening finds the empty bucket
      expect(() => r.step('dev-a', 1, 'step seq 1')).toThrow(TokenRateError);
      r.release('dev-a');
      c.advance(1000);
      jest.advanceTimersByTime(1000);
      expect(r.size).toBe(0);
      r.acquire('dev-c');
      r.release('dev-c'); // a full bucket goes at once
      expect(r.size).toBe(0);
    } finally {
      jest.useRealTimers();
    }
  });

  it('is off by default and read from EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT', () => {
    expect(loadConfig({ MODEL_DIR: '/m' }).EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT).toBe(0);
    expect(loadConfig({ MODEL_DIR: '/m', EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT: '250' }).EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT).toBe(250);
  });
});
