/**
 * A small dependency-free SVG chart writer: line charts and grouped bar charts from named
 * series of (x, y) points. Pure: returns the SVG document as a string; the caller writes it.
 *
 *   const svg = renderChart({ kind: 'line', title: 'Latency', xLabel: 'n', yLabel: 'ms',
 *     series: [{ name: 'dp', points: [{ x: 128, y: 3.1 }, { x: 256, y: 5.9 }] }] });
 */

/** One data point. Non-finite values are skipped. */
export interface ChartPoint {
  readonly x: number;
  readonly y: number;
}

/** A named series; its colour comes from the palette in series order unless given. */
export interface ChartSeries {
  readonly name: string;
  readonly points: readonly ChartPoint[];
  /** CSS colour; default from a colour-blind-safe palette. */
  readonly color?: string;
}

/** What to draw. */
export interface ChartSpec {
  readonly title: string;
  readonly xLabel: string;
  readonly yLabel: string;
  readonly series: readonly ChartSeries[];
  /** `line` (default): points joined per series on a numeric x axis. `bar`: grouped bars per distinct x. */
  readonly kind?: 'line' | 'bar';
  /** Labels for categorical x: x = i is shown as `xCategories[i]` (bars, or lines over categories). */
  readonly xCategories?: readonly string[];
  /** Pixel size; default 720 × 420. */
  readonly width?: number;
  readonly height?: number;
  /** Fixed y range; by default from the data (bars always include 0). */
  readonly yMin?: number;
  readonly yMax?: number;
  /** Formats y tick labels (default: up to 4 significant digits) and x ticks on numeric axes. */
  readonly formatY?: (v: number) => string;
  readonly formatX?: (v: number) => string;
}

/** Okabe–Ito palette: distinguishable with the common colour-vision deficiencies. */
const PALETTE = ['#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#F0E442', '#000000'];

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function defaultFormat(v: number): string {
  if (v === 0) return '0';
  const abs = Math.abs(v);
  if (abs >= 1e6 || abs < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

/** Round tick positions covering [lo, hi], about `count` of them (1, 2, 2.5, 5 × 10^k steps). */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(Number.isFinite(lo) && Number.isFinite(hi))) return [];
  if (hi === lo) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks: number[] = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function f(v: number): string {
  return String(Math.round(v * 10) / 10);
}

/**
 * Renders `spec` as a standalone SVG document (UTF-8 text, no external resources).
 * Empty or all-non-finite data gives a chart with axes and a "no data" note.
 */
export function renderChart(spec: ChartSpec): string {
  const width = spec.width ?? 720;
  const height = spec.height ?? 420;
  const kind = spec.kind ?? 'line';
  const fmtY = spec.formatY ?? defaultFormat;
  const fmtX = spec.formatX ?? defaultFormat;
  const series = spec.series.map((s, i) => ({
    name: s.name,
    color: s.color ?? PALETTE[i % PALETTE.length],
    points: s.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y)),
  }));
  const all = series.flatMap((s) => s.points);
  const margin = { left: 70, right: 20, top: 48, bottom: 58 };
  const legendRows = Math.ceil(series.length / 4);
  margin.top += 16 * legendRows;
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;

  let yLo = spec.yMin ?? Math.min(...all.map((p) => p.y));
  let yHi = spec.yMax ?? Math.max(...all.map((p) => p.y));
  if (kind === 'bar' && spec.yMin === undefined) yLo = Math.min(0, yLo);
  if (all.length === 0) {
    yLo = 0;
    yHi = 1;
  }
  if (yHi === yLo) {
    yHi = yLo + 1;
  }
  const yTicks = niceTicks(yLo, yHi);
  // Without a fixed top, end the axis on a tick above the data, so the tallest bar or point
  // sits under a labelled line instead of touching the frame.
  if (spec.yMax === undefined && yTicks.length >= 2 && yTicks[yTicks.length - 1] < yHi) {
    yTicks.push(Number((yTicks[yTicks.length - 1] + yTicks[1] - yTicks[0]).toPrecision(12)));
  }
  if (spec.yMin === undefined && yTicks.length) yLo = Math.min(yLo, yTicks[0]);
  if (spec.yMax === undefined && yTicks.length) yHi = Math.max(yHi, yTicks[yTicks.length - 1]);
  const sy = (y: number): number => margin.top + plotH - ((y - yLo) / (yHi - yLo)) * plotH;

  const categorical = kind === 'bar' || spec.xCategories !== undefined;
  const xs = categorical ? (spec.xCategories ? spec.xCategories.map((_, i) => i) : [...new Set(all.map((p) => p.x))].sort((a, b) => a - b)) : [];
  let xLo = all.length ? Math.min(...all.map((p) => p.x)) : 0;
  let xHi = all.length ? Math.max(...all.map((p) => p.x)) : 1;
  if (xHi === xLo) {
    xLo -= 1;
    xHi += 1;
  }
  const band = categorical ? plotW / Math.max(1, xs.length) : 0;
  const sx = (x: number): number => (categorical ? margin.left + band * (xs.indexOf(x) + 0.5) : margin.left + ((x - xLo) / (xHi - xLo)) * plotW);

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
  );
  out.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  out.push(`<text x="${width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${escapeXml(spec.title)}</text>`);
  // Legend.
  series.forEach((s, i) => {
    const lx = margin.left + (i % 4) * (plotW / 4);
    const ly = 40 + 16 * Math.floor(i / 4);
    out.push(`<rect x="${f(lx)}" y="${ly - 9}" width="12" height="10" fill="${s.color}"/>`);
    out.push(`<text x="${f(lx + 16)}" y="${ly}">${escapeXml(s.name)}</text>`);
  });
  // Grid and y axis.
  for (const t of yTicks) {
    if (t < yLo - 1e-12 || t > yHi + 1e-12) continue;
    out.push(`<line x1="${margin.left}" x2="${margin.left + plotW}" y1="${f(sy(t))}" y2="${f(sy(t))}" stroke="#ddd"/>`);
    out.push(`<text x="${margin.left - 6}" y="${f(sy(t) + 4)}" text-anchor="end">${escapeXml(fmtY(t))}</text>`);
  }
  out.push(`<line x1="${margin.left}" x2="${margin.left}" y1="${margin.top}" y2="${margin.top + plotH}" stroke="#333"/>`);
  out.push(
    `<line x1="${margin.left}" x2="${margin.left + plotW}" y1="${f(sy(Math.max(yLo, Math.min(0, yHi))))}" y2="${f(sy(Math.max(yLo, Math.min(0, yHi))))}" stroke="#333"/>`,
  );
  // X ticks.
  const xTicks = categorical ? xs : niceTicks(xLo, xHi, 6);
  for (const t of xTicks) {
    const label = categorical && spec.xCategories ? (spec.xCategories[t] ?? fmtX(t)) : fmtX(t);
    out.push(`<text x="${f(sx(t))}" y="${margin.top + plotH + 18}" text-anchor="middle">${escapeXml(label)}</text>`);
  }
  out.push(`<text x="${margin.left + plotW / 2}" y="${height - 14}" text-anchor="middle">${escapeXml(spec.xLabel)}</text>`);
  out.push(`<text transform="translate(16 ${margin.top + plotH / 2}) rotate(-90)" text-anchor="middle">${escapeXml(spec.yLabel)}</text>`);

  if (all.length === 0) {
    out.push(`<text x="${margin.left + plotW / 2}" y="${margin.top + plotH / 2}" text-anchor="middle" fill="#888">no data</text>`);
  } else if (kind === 'bar') {
    const inner = band * 0.8;
    const barW = inner / Math.max(1, series.length);
    const base = sy(Math.max(yLo, Math.min(0, yHi)));
    series.forEach((s, si) => {
      for (const p of s.points) {
        const x0 = sx(p.x) - inner / 2 + si * barW;
        const y = sy(p.y);
        out.push(
          `<rect x="${f(x0)}" y="${f(Math.min(y, base))}" width="${f(Math.max(1, barW - 1))}" height="${f(Math.abs(base - y))}" fill="${s.color}"><title>${escapeXml(`${s.name}: ${fmtY(p.y)}`)}</title></rect>`,
        );
      }
    });
  } else {
    for (const s of series) {
      const pts = [...s.points].sort((a, b) => (categorical ? xs.indexOf(a.x) - xs.indexOf(b.x) : a.x - b.x));
      if (pts.length > 1)
        out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${pts.map((p) => `${f(sx(p.x))},${f(sy(p.y))}`).join(' ')}"/>`);
      for (const p of pts)
        out.push(
          `<circle cx="${f(sx(p.x))}" cy="${f(sy(p.y))}" r="3" fill="${s.color}"><title>${escapeXml(`${s.name}: (${fmtX(p.x)}, ${fmtY(p.y)})`)}</title></circle>`,
        );
    }
  }
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
