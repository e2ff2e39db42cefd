/**
 * Deterministic pseudo-random numbers for synthetic weights. Pure integer arithmetic plus
 * Math.log/Math.sqrt/Math.cos/Math.sin, which V8 implements with its own portable fdlibm code, so
 * the same seed gives the same floats on every machine Node runs on.
 */

/** FNV-1a over the UTF-16 code units of `text`, mixed with splitmix32: a 32-bit seed per tensor name. */
export function hashSeed(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return splitmix32(h >>> 0);
}

function splitmix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  let z = x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** xoshiro128** generator: 32-bit outputs, period 2^128-1. */
export class Xoshiro128 {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    // Expand one 32-bit seed into four non-zero state words.
    let s = seed >>> 0;
    const next = (): number => (s = splitmix32(s));
    this.a = next(); this.b = next(); this.c = next(); this.d = next() | 1;
  }

  /** Next unsigned 32-bit integer. */
  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a; this.d ^= this.b; this.b ^= this.c; this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }

  /**
   * Fills `out` with `mean + std * N(0,1)` draws (Box–Muller, two per pair of uniforms).
   * Values are rounded to float32 on store.
   */
  fillNormal(out: Float32Array, mean: number, std: number): void {
    const TWO_PI = 2 * Math.PI;
    const SCALE = 1 / 16777216; // 2^-24: uniforms from the top 24 bits
    let i = 0;
    for (; i + 1 < out.length; i += 2) {
      const u1 = ((this.nextU32() >>> 8) + 1) * SCALE; // (0, 1], so log is finite
      const u2 = (this.nextU32() >>> 8) * SCALE;
      const r = Math.sqrt(-2 * Math.log(u1)) * std;
      const th = TWO_PI * u2;
      out[i] = mean + r * Math.cos(th);
      out[i + 1] = mean + r * Math.sin(th);
    }
    if (i < out.length) {
      const u1 = ((this.nextU32() >>> 8) + 1) * SCALE;
      const u2 = (this.nextU32() >>> 8) * SCALE;
      out[i] = mean + Math.sqrt(-2 * Math.log(u1)) * std * Math.cos(TWO_PI * u2);
    }
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
