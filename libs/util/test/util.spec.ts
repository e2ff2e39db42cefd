import { Rng, seededRandom, sleep } from '../src';

describe('seeded random (mulberry32)', () => {
  it('gives the same stream for the same seed, as a function and as an Rng', () => {
    const f = seededRandom(42);
    const r = new Rng(42);
    const a = Array.from({ length: 5 }, () => f());
    expect(a).toEqual(Array.from({ length: 5 }, () => r.next()));
    expect(a).toEqual(Array.from({ length: 5 }, seededRandom(42)));
    expect(a[0]).toBeCloseTo(0.6011037519201636, 15);
    expect(a.every((x) => x >= 0 && x < 1)).toBe(true);
    expect(seededRandom(43)()).not.toBe(a[0]);
  });
});

describe('sleep', () => {
  it('waits at least the time asked, and not at all for 0', async () => {
    const t0 = performance.now();
    await sleep(30);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(29);
    let later = false;
    const p = sleep(0).then(() => {
      later = true;
    });
    await p;
    expect(later).toBe(true);
  });
});
