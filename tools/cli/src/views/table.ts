/** A plain-text table: a header row, a rule, then the rows, columns padded to their widest cell. */
export function formatTable(
  header: readonly string[],
  rows: readonly (readonly string[])[],
  opts: { indent?: string; rightAlign?: readonly number[] } = {},
): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const right = new Set(opts.rightAlign ?? []);
  const line = (cells: readonly string[]): string =>
    (opts.indent ?? '') +
    cells
      .map((c, i) => (right.has(i) ? c.padStart(widths[i]) : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

/** Milliseconds for a table cell: whole ms from 10 up, one decimal below. */
export function ms(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  return Math.abs(x) >= 10 ? x.toFixed(0) : x.toFixed(1);
}
