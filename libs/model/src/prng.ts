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

/**
 * xoshiro128** generator: 32-bit outputs, period 2^128-1. The state lives in an Int32Array and the
 * bulk fill works on locals, so the hot loop never boxes numbers whatever the compiler does with
 * class fields.
 */
export class Xoshiro128 {
  private readonly s = new Int32Array(4);

  constructor(seed: number) {
    // Expand one 32-bit seed into four state words (the last forced odd so the state is never zero).
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) this.s[i] = x = splitmix32(x);
    this.s[3] |= 1;
  }

  /** Next unsigned 32-bit integer. */
  nextU32(): number {
    const s = this.s;
    const result = mul9(rotl(mul5(s[1]), 7)) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /**
   * Fills `out` with `mean + std * N(0,1)` draws (Box–Muller, two per pair of uniforms drawn in
   * sequence from {@link nextU32}'s stream). Values are rounded to float32 on store.
   */
  fillNormal(out: Float32Array, mean: number, std: number): void {
    const TWO_PI = 2 * Math.PI;
    const SCALE = 1 / 16777216; // 2^-24: uniforms from the top 24 bits
    let a = this.s[0] | 0,
      b = this.s[1] | 0,
      c = this.s[2] | 0,
      d = this.s[3] | 0;
    let u1 = 0;
    const n = out.length;
    for (let i = 0; i < n; i += 2) {
      for (let k = 0; k < 2; k++) {
        // Inlined nextU32 on locals.
        const r = mul9(rotl(mul5(b), 7)) >>> 8;
        const t = b << 9;
        c ^= a;
        d ^= b;
        b ^= c;
        a ^= d;
        c ^= t;
        d = rotl(d, 11);
        if (k === 0)
          u1 = (r + 1) * SCALE; // (0, 1], so log is finite
        else {
          const rad = Math.sqrt(-2 * Math.log(u1)) * std;
          const th = TWO_PI * r * SCALE;
          out[i] = mean + rad * Math.cos(th);
          if (i + 1 < n) out[i + 1] = mean + rad * Math.sin(th);
        }
      }
    }
    this.s[0] = a;
    this.s[1] = b;
    this.s[2] = c;
    this.s[3] = d;
  }
}

// x*5 and x*9 modulo 2^32 with shifts: exact in doubles before the |0 wrap. Used instead of
// Math.imul, which is a slow cross-realm call inside jest's vm sandbox.
function mul5(x: number): number {
  return ((x << 2) + x) | 0;
}

function mul9(x: number): number {
  return ((x << 3) + x) | 0;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
