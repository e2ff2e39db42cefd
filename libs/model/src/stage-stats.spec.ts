import { PREFILL_FIT_MIN_SAMPLES, StageStats } from './stage-stats';

describe('StageStats prefill line', () => {
  const lengths = [8, 32, 64, 128, 256, 16, 200, 100, 48, 24];

  it('recovers a fixed part and a per-token slope from prefills of different lengths', () => {
    const stats = new StageStats(1);
    for (const n of lengths) stats.record(0, n, 6 + 0.4 * n);
    const line = stats.prefillLine(0);
    expect(line?.fixedMs).toBeCloseTo(6, 6);
    expect(line?.msPerToken).toBeCloseTo(0.4, 6);
    const [t] = stats.snapshot();
    expect(t.prefillFixedMs).toBeCloseTo(6, 6);
    expect(t.prefillMsPerTokenFitted).toBeCloseTo(0.4, 6);
    // The mean per token keeps the fixed part spread over each prompt: above the slope.
    expect(t.prefillMsPerToken).toBeGreaterThan(0.45);
    // A prompt is priced by the line: 256 tokens cost 6 + 102.4 ms, not the mean per token × 256.
    expect(stats.figure(0, 256)).toBeCloseTo(108.4, 6);
  });

  it('fits nothing before enough prefills, or while they are all of about one length', () => {
    const few = new StageStats(1);
    for (const n of lengths.slice(0, PREFILL_FIT_MIN_SAMPLES - 1)) few.record(0, n, 6 + 0.4 * n);
    expect(few.prefillLine(0)).toBeUndefined();
    expect(few.snapshot()[0].prefillMsPerTokenFitted).toBeUndefined();
    const alike = new StageStats(1);
    for (let i = 0; i < 20; i++) alike.record(0, 30 + (i % 3), 20);
    expect(alike.prefillLine(0)).toBeUndefined();
    // Without a line, a prompt is priced by the mean per token.
    expect(alike.figure(0, 60)).toBeCloseTo(alike.snapshot()[0].prefillMsPerToken * 60, 9);
  });

  it('takes the line through the origin when the best line has a negative fixed part', () => {
    const stats = new StageStats(1);
    // Superlinear (attention's n² term): the least-squares line would cross below 0.
    for (const n of lengths) stats.record(0, n, 0.001 * n * n + 0.1 * n);
    const line = stats.prefillLine(0);
    expect(line?.fixedMs).toBe(0);
    expect(line?.msPerToken).toBeGreaterThan(0.1);
  });

  it('keeps decode steps out of the line', () => {
    const stats = new StageStats(1);
    for (const n of lengths) {
      stats.record(0, n, 6 + 0.4 * n);
      stats.record(0, 1, 9);
    }
    expect(stats.prefillLine(0)?.fixedMs).toBeCloseTo(6, 6);
    expect(stats.figure(0, 1)).toBe(9);
  });
});

describe('StageStats decode line', () => {
  const contexts = [12, 40, 90, 150, 230, 20, 180, 64, 120, 300];

  it('recovers a fixed part and a slope over the context from decode steps of different contexts', () => {
    const stats = new StageStats(1);
    for (const c of contexts) stats.record(0, 1, 4 + 0.02 * c, c);
    const line = stats.decodeLine(0);
    expect(line?.fixedMs).toBeCloseTo(4, 6);
    expect(line?.msPerContextToken).toBeCloseTo(0.02, 6);
    const [t] = stats.snapshot();
    expect(t.decodeFixedMs).toBeCloseTo(4, 6);
    expect(t.decodeMsPerContextToken).toBeCloseTo(0.02, 6);
    // A step at 500 positions is priced by the line (14 ms), not by the mean step; without a context, the mean.
    expect(stats.figure(0, 1, 500)).toBeCloseTo(14, 6);
    expect(stats.figure(0, 1)).toBe(t.decodeMs);
    expect(t.decodeMs).toBeLessThan(12);
    // Prefills stay out of it.
    stats.record(0, 64, 30, 0);
    expect(stats.decodeLine(0)?.msPerContextToken).toBeCloseTo(0.02, 6);
  });

  it('fits nothing for steps without a context, too few of them, contexts all alike, or a cost that does not rise', () => {
    const bare = new StageStats(1);
    for (const c of contexts) bare.record(0, 1, 4 + 0.02 * c);
    expect(bare.decodeLine(0)).toBeUndefined();
    const few = new StageStats(1);
    for (const c of contexts.slice(0, PREFILL_FIT_MIN_SAMPLES - 1)) few.record(0, 1, 4 + 0.02 * c, c);
    expect(few.decodeLine(0)).toBeUndefined();
    const alike = new StageStats(1);
    for (let i = 0; i < 20; i++) alike.record(0, 1, 4 + (i % 3), 100 + (i % 3));
    expect(alike.decodeLine(0)).toBeUndefined();
    // An MLP's step: flat, or falling by noise. No line through the origin, which would price it by the context.
    const flat = new StageStats(1);
    for (const c of contexts) flat.record(0, 1, 3 - 0.001 * c, c);
    expect(flat.decodeLine(0)).toBeUndefined();
    expect(flat.snapshot()[0].decodeMsPerContextToken).toBeUndefined();
    expect(flat.figure(0, 1, 1000)).toBe(flat.snapshot()[0].decodeMs);
  });
});
