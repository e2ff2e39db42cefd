/** @tandem/plot: a small dependency-free SVG chart writer (pure: it returns the document as a string). */
export { niceTicks, renderChart } from './svg';
export type { ChartPoint, ChartSeries, ChartSpec } from './svg';
