/** The element at rank ⌊q·n⌋ (clamped) of the sorted list, NaN when empty: q = 0.99 is the p99 of a sample; `xs` is left as it is. O(n log n). */
export function quantile(xs: readonly number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))] : NaN;
}

/** The median of a non-empty list (the mean of the middle two for an even length); `xs` is left as it is. O(n log n). */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
