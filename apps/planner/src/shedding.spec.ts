import { DEFAULT_SHEDDING, Shedder, type ShedCandidate, type ShedOptions } from './shedding';

const opts = (over: Partial<ShedOptions> = {}): ShedOptions => ({ ...DEFAULT_SHEDDING, above: 0.9, below: 0.7, dwellMs: 1000, ...over });
const cand = (clientId: string, requestClass: string, workSavedMs: number, ratePerS = 0): ShedCandidate => ({ clientId, requestClass, workSavedMs, ratePerS });
const names = (cs: readonly ShedCandidate[]): string[] => cs.map((c) => `${c.clientId}/${c.requestClass}`);
const noRate = (): number => 0;

describe('Shedder', () => {
  it('refuses options that would flap or mean nothing, naming the option', () => {
    expect(() => new Shedder(opts({ below: 0.9 }))).toThrow(/below must be in \(0, above=0.9\), given 0.9/);
    expect(() => new Shedder(opts({ above: 1.5 }))).toThrow(/above must be in \(0, 1\], given 1.5/);
    expect(() => new Shedder(opts({ dwellMs: -1 }))).toThrow(/dwellMs must be >= 0, given -1/);
  });

  it('sheds nothing below the threshold, nor when disabled', () => {
    const s = new Shedder(opts());
    const cands = (): ShedCandidate[] => [cand('a', 'chat', 100, 1)];
    expect(s.decide(0.89, 0, cands, noRate)).toEqual({ shed: [], restored: [] });
    expect(new Shedder(opts({ enabled: false })).decide(1, 0, cands, noRate)).toEqual({ shed: [], restored: [] });
  });

  it('sheds the pairs that save the most work per request first, just enough to bring the server down to `below` at their rates', () => {
    const s = new Shedder(opts());
    const cands = (): ShedCandidate[] => [
      cand('a', 'chat', 100, 1), // frees 0.10
      cand('b', 'chat', 400, 0.5), // frees 0.20, the most per request
      cand('c', 'qa', 200, 1), // frees 0.20
      cand('d', 'qa', 50, 10), // frees 0.50, but saves the least per request
    ];
    // From 1.0: b (0.2) leaves 0.8, c (0.2) leaves 0.6 <= 0.7: two pairs.
    const d = s.decide(1, 0, cands, noRate);
    expect(names(d.shed)).toEqual(['b/chat', 'c/qa']);
    expect(s.isShed('b', 'chat') && s.isShed('c', 'qa')).toBe(true);
    expect(s.isShed('a', 'chat')).toBe(false);
    // Still overloaded (the queue drains first), but within the dwell: no change.
    expect(s.decide(1, 999, cands, noRate).shed).toEqual([]);
    // After it, the next by saving: a shed pair is not shed twice.
    expect(names(s.decide(1, 1000, cands, noRate).shed)).toEqual(['a/chat', 'd/qa']);
  });

  it('sheds one pair at a time while its rate is unknown, and ignores pairs that save nothing', () => {
    const s = new Shedder(opts({ dwellMs: 0 }));
    const cands = (): ShedCandidate[] => [cand('a', 'chat', 0, 5), cand('b', 'chat', 30), cand('c', 'chat', 20)];
    expect(names(s.decide(0.95, 0, cands, noRate).shed)).toEqual(['b/chat']);
    expect(names(s.decide(0.95, 1, cands, noRate).shed)).toEqual(['c/chat']);
    expect(s.decide(0.95, 2, cands, noRate).shed).toEqual([]);
  });

  it('gives pairs back last first, only while the work they add at their rates keeps the server at `below`', () => {
    const s = new Shedder(opts());
    const cands = (): ShedCandidate[] => [cand('a', 'chat', 300, 1), cand('b', 'chat', 200, 1), cand('c', 'chat', 100, 1)];
    s.decide(1.2, 0, cands, noRate); // a (0.3) → 0.9, b (0.2) → 0.7: a then b
    expect(names(s.shed)).toEqual(['a/chat', 'b/chat']);
    const rates: Record<string, number> = { a: 1, b: 1 };
    const rateOf = (clientId: string): number => rates[clientId] ?? 0;
    // Between the thresholds: nothing moves.
    expect(s.decide(0.8, 2000, cands, rateOf)).toEqual({ shed: [], restored: [] });
    // At 0.6, b (last shed) would bring it to 0.8 > 0.7: kept.
    expect(s.decide(0.6, 2000, cands, rateOf).restored).toEqual([]);
    // At 0.45: b → 0.65 fits, a → 0.95 does not.
    expect(names(s.decide(0.45, 2000, cands, rateOf).restored)).toEqual(['b/chat']);
    expect(s.decide(0.1, 2500, cands, rateOf).restored).toEqual([]); // within the dwell
    expect(names(s.decide(0.1, 3000, cands, rateOf).restored)).toEqual(['a/chat']);
    expect(s.shed).toEqual([]);
  });

  it('scales every estimate by the server time a ms of predicted work takes', () => {
    const cands = (): ShedCandidate[] => [cand('a', 'chat', 300, 1), cand('b', 'chat', 200, 1), cand('c', 'chat', 100, 1)];
    // Each pair frees twice its predicted share: a alone (0.6) brings 1.2 to 0.6.
    const s = new Shedder(opts());
    expect(names(s.decide(1.2, 0, cands, noRate, 2).shed)).toEqual(['a/chat']);
    // Giving it back would add 0.6: at 0.3 that is 0.9 > 0.7 (at scale 1, 0.6 would fit).
    expect(s.decide(0.3, 2000, cands, () => 1, 2).restored).toEqual([]);
    expect(names(s.decide(0.1, 2000, cands, () => 1, 2).restored)).toEqual(['a/chat']);
  });

  it('gives a pair of unknown rate back only when the server is under half of `below`', () => {
    const s = new Shedder(opts({ dwellMs: 0 }));
    s.decide(1, 0, () => [cand('a', 'chat', 100)], noRate);
    expect(s.decide(0.5, 1, () => [], noRate).restored).toEqual([]);
    expect(names(s.decide(0.3, 2, () => [], noRate).restored)).toEqual(['a/chat']);
  });

  it('forgets a client with its pairs', () => {
    const s = new Shedder(opts({ dwellMs: 0 }));
    s.decide(1, 0, () => [cand('a', 'chat', 100, 1), cand('b', 'chat', 50, 10)], noRate);
    s.forget('a');
    expect(names(s.shed)).toEqual(['b/chat']);
  });

  it('does not flap: on a server whose load is what its unshed pairs offer, it settles and stays', () => {
    // Six pairs offering 0.25 each (1.5 in all: overloaded); the server reads min(1, offered).
    const pairs = Array.from({ length: 6 }, (_, i) => cand(`c${i}`, 'chat', 100 + i, 2.5));
    const s = new Shedder(opts({ dwellMs: 3000 }));
    const offered = (): number => pairs.filter((p) => !s.isShed(p.clientId, p.requestClass)).reduce((a, p) => a + (p.ratePerS * p.workSavedMs) / 1000, 0);
    let changes = 0;
    let settledAt = -1;
    for (let t = 0; t < 300_000; t += 1000) {
      const d = s.decide(
        Math.min(1, offered()),
        t,
        () => pairs,
        () => 2.5,
      );
      if (d.shed.length || d.restored.length) {
        changes++;
        settledAt = t;
      }
    }
    // Down to at most 0.7 takes shedding 4 of the 6 pairs (1.5 − 4 × ~0.26 ≈ 0.45), then no pair fits back under 0.7.
    expect(s.shed).toHaveLength(4);
    expect(offered()).toBeLessThanOrEqual(0.7);
    expect(changes).toBeLessThanOrEqual(2);
    expect(settledAt).toBeLessThan(10_000);
  });
});
