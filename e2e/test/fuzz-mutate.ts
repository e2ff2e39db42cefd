/**
 * Mutations of valid encoded protobuf messages for the fuzz test (e2e/test/fuzz.int.spec.ts):
 * bit flips, truncation, field-number and wire-type changes, varint overflows, huge lengths,
 * duplicated and random spans. Deterministic for a given `rnd`.
 */
export type Rnd = () => number;

const int = (rnd: Rnd, n: number): number => Math.floor(rnd() * n);

function varint(v: bigint): number[] {
  const out: number[] = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return out;
}

/** A tag: field number and wire type. */
const tag = (field: number, wire: number): number[] => varint((BigInt(field) << 3n) | BigInt(wire));

const MUTATIONS: readonly { name: string; apply(b: number[], rnd: Rnd): number[] }[] = [
  {
    name: 'bit flips',
    apply: (b, rnd) => {
      const n = 1 + int(rnd, 4);
      for (let i = 0; i < n && b.length; i++) b[int(rnd, b.length)] ^= 1 << int(rnd, 8);
      return b;
    },
  },
  { name: 'truncation', apply: (b, rnd) => b.slice(0, int(rnd, b.length + 1)) },
  {
    name: 'field-number change',
    apply: (b, rnd) => {
      // Rewrite the first byte (always a tag) or a random one with a tag of another field or wire type.
      const at = rnd() < 0.5 || b.length === 0 ? 0 : int(rnd, b.length);
      const field = [1, 2, 3, 4, 5, 6, 7, 15, 16, 99, 2047, 536_870_911][int(rnd, 12)];
      return [...b.slice(0, at), ...tag(field, int(rnd, 8)), ...b.slice(at + 1)];
    },
  },
  {
    name: 'varint overflow',
    apply: (b, rnd) => {
      const at = int(rnd, b.length + 1);
      const over =
        rnd() < 0.5 ? [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01] : [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
      return [...b.slice(0, at), ...tag(1 + int(rnd, 6), 0), ...over, ...b.slice(at)];
    },
  },
  {
    name: 'huge length',
    apply: (b, rnd) => {
      const at = rnd() < 0.5 ? 0 : int(rnd, b.length + 1);
      const len = [0x7fffffffn, 0xffffffffn, 1n << 40n, 0xffffffffffffffffn, 1n << 20n][int(rnd, 5)];
      return [...b.slice(0, at), ...tag(1 + int(rnd, 6), 2), ...varint(len), ...b.slice(at, at + int(rnd, 16))];
    },
  },
  {
    name: 'duplicated span',
    apply: (b, rnd) => {
      const a = int(rnd, b.length + 1);
      const e = a + int(rnd, Math.min(64, b.length - a) + 1);
      return [...b.slice(0, e), ...b.slice(a, e), ...b.slice(e)];
    },
  },
  {
    name: 'random bytes',
    apply: (b, rnd) => {
      const at = int(rnd, b.length + 1);
      const n = 1 + int(rnd, 12);
      return [...b.slice(0, at), ...Array.from({ length: n }, () => int(rnd, 256)), ...b.slice(at)];
    },
  },
  {
    name: 'byte set to 0x00/0xff/0x80',
    apply: (b, rnd) => {
      if (b.length) b[int(rnd, b.length)] = [0x00, 0xff, 0x80][int(rnd, 3)];
      return b;
    },
  },
];

/** One to three mutations of `valid`; returns the bytes and the names of what was done. */
export function mutate(valid: Uint8Array, rnd: Rnd): { bytes: Buffer; how: string[] } {
  let b = Array.from(valid);
  const how: string[] = [];
  const n = 1 + (rnd() < 0.3 ? int(rnd, 3) : 0);
  for (let i = 0; i < n; i++) {
    const m = MUTATIONS[int(rnd, MUTATIONS.length)];
    b = m.apply(b, rnd);
    how.push(m.name);
  }
  return { bytes: Buffer.from(b), how };
}
