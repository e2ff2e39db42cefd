/**
 * A small seeded generator (mulberry32): uniform floats in [0, 1) from a 32-bit seed, the same
 * stream on every run, and the distributions drawn from it. For traces, fixtures, tests and
 * benchmarks; not for anything secret.
 */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }

  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Uniform in (0, 1]: safe under log. */
  private open(): number {
    return 1 - this.next();
  }

  /** An integer uniform in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  normal(): number {
    return Math.sqrt(-2 * Math.log(this.open())) * Math.cos(2 * Math.PI * this.next());
  }

  exponential(mean: number): number {
    return -Math.log(this.open()) * mean;
  }

  /** Gamma(shape k, scale θ) by Marsaglia and Tsang (2000); k < 1 by the U^(1/k) boost. */
  gamma(k: number, theta: number): number {
    if (k < 1) return this.gamma(k + 1, theta) * this.open() ** (1 / k);
    const d = k - 1 / 3;
    const c = 1 / Math.sqrt(9 * d);
    for (;;) {
      let x: number;
      let v: number;
      do {
        x = this.normal();
        v = 1 + c * x;
      } while (v <= 0);
      v = v * v * v;
      const u = this.open();
      if (Math.log(u) < 0.5 * x * x + d - d * v + d * Math.log(v)) return d * v * theta;
    }
  }

  /** Index drawn with probability proportional to `weights`. */
  pick(weights: readonly number[]): number {
    const total = weights.reduce((a, b) => a + b, 0);
    let r = this.next() * total;
    for (let i = 0; i < weights.length; i++) {
      r -= weights[i];
      if (r < 0) return i;
    }
    return weights.length - 1;
  }
}

/** The uniform stream of an {@link Rng} as a function: `seededRandom(7)()` is `new Rng(7).next()`. */
export function seededRandom(seed: number): () => number {
  const rng = new Rng(seed);
  return () => rng.next();
}
