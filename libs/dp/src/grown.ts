/** A copy of `a`, `capacity` long (zeros past its end): one array of a growable struct-of-arrays store, grown. */
export function grown<T extends Float64Array | Int32Array | Uint8Array>(a: T, capacity: number): T {
  const b = new (a.constructor as new (length: number) => T)(capacity);
  b.set(a);
  return b;
}
