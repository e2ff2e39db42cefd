import { mainThreadCpuMs, OVERHEAD_PRIOR, OverheadModel, type OverheadSample } from './overhead';
import { seededRandom } from '@tandem/testkit';

const rng = seededRandom;

/** Intervals of mixed traffic whose CPU follows known coefficients, with ±5 % noise. */
function traffic(n: number, truth: { inMs: number; outMs: number; kibIn: number; kibOut: number; idle: number }, seed = 1): OverheadSample[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => {
    const messagesIn = Math.floor(r() * 400);
    const messagesOut = messagesIn + Math.floor(r() * 300); // streamed tokens: more out than in
    const bytesIn = messagesIn * (r() < 0.5 ? 1024 : 40_000) * r();
    const bytesOut = messagesOut * 1024 * r();
    const wallMs = 900 + r() * 200;
    const cpu =
      truth.inMs * messagesIn + truth.outMs * messagesOut + (truth.kibIn * bytesIn) / 1024 + (truth.kibOut * bytesOut) / 1024 + (truth.idle * wallMs) / 1000;
    return { cpuMs: cpu * (1 + (r() - 0.5) * 0.1), wallMs, messagesIn, messagesOut, bytesIn, bytesOut };
  });
}

describe('OverheadModel', () => {
  it('is the prior before any traffic', () => {
    const fit = new OverheadModel().fit();
    expect(fit.samples).toBe(0);
    expect(fit.msPerMessageIn).toBeCloseTo(OVERHEAD_PRIOR.msPerMessageIn, 9);
    expect(fit.msPerKibOut).toBeCloseTo(OVERHEAD_PRIOR.msPerKibOut, 9);
  });

  it('recovers the per-message and per-byte costs from a window of busy intervals', () => {
    const truth = { inMs: 0.45, outMs: 0.08, kibIn: 0.004, kibOut: 0.01, idle: 5 };
    const m = new OverheadModel(120);
    for (const s of traffic(120, truth)) m.record(s);
    const fit = m.fit();
    expect(fit.samples).toBe(120);
    expect(fit.msPerMessageIn).toBeGreaterThan(truth.inMs * 0.85);
    expect(fit.msPerMessageIn).toBeLessThan(truth.inMs * 1.15);
    // the cost of a typical hand-over (one step in, its answer out, 1 KiB each way) within 10 %
    const handOver = (f: typeof fit): number => f.msPerMessageIn + f.msPerMessageOut + f.msPerKibIn + f.msPerKibOut;
    expect(
      Math.abs(
        handOver(fit) / handOver({ ...fit, msPerMessageIn: truth.inMs, msPerMessageOut: truth.outMs, msPerKibIn: truth.kibIn, msPerKibOut: truth.kibOut }) - 1,
      ),
    ).toBeLessThan(0.1);
  });

  it('fits KV-cache KiB as features of their own: a hand-over costs what its cache costs, not what a step tensor KiB does', () => {
    const truth = { inMs: 0.3, outMs: 0.1, kibIn: 0.003, kibOut: 0.006, idle: 4 };
    const kvIn = 0.02;
    const kvOut = 0.007;
    const r = rng(5);
    const m = new OverheadModel(120);
    for (const s of traffic(120, truth, 3)) {
      // Some intervals carry hand-overs: whole 512-token caches of the small preset (6 MiB), in or out.
      const kvBytesIn = r() < 0.4 ? Math.floor(r() * 3) * 6 * 2 ** 20 : 0;
      const kvBytesOut = r() < 0.4 ? Math.floor(r() * 3) * 6 * 2 ** 20 : 0;
      m.record({ ...s, cpuMs: s.cpuMs + (kvIn * kvBytesIn + kvOut * kvBytesOut) / 1024, kvBytesIn, kvBytesOut });
    }
    const fit = m.fit();
    expect(fit.msPerKvKibIn).toBeGreaterThan(kvIn * 0.9);
    expect(fit.msPerKvKibIn).toBeLessThan(kvIn * 1.1);
    expect(fit.msPerKvKibOut).toBeGreaterThan(kvOut * 0.8);
    expect(fit.msPerKvKibOut).toBeLessThan(kvOut * 1.2);
    // The step tensors' per-KiB cost is not dragged toward the caches'.
    expect(fit.msPerKibIn).toBeLessThan(kvIn / 2);
    // Before any hand-over, the prior (the benchmark's figures) prices one.
    const quiet = new OverheadModel(120);
    for (const s of traffic(120, truth, 3)) quiet.record(s);
    expect(quiet.fit().msPerKvKibIn).toBeCloseTo(OVERHEAD_PRIOR.msPerKvKibIn, 6);
  });

  it('keeps every coefficient >= 0 and forgets intervals beyond its window', () => {
    const m = new OverheadModel(30);
    // CPU that falls with traffic (noise only): the fit must not go negative
    for (let i = 0; i < 60; i++)
      m.record({ cpuMs: 50 - i * 0.1, wallMs: 1000, messagesIn: i * 10, messagesOut: i * 10, bytesIn: i * 1000, bytesOut: i * 1000 });
    const fit = m.fit();
    for (const v of [fit.msPerMessageIn, fit.msPerMessageOut, fit.msPerKibIn, fit.msPerKibOut, fit.idleMsPerS]) expect(v).toBeGreaterThanOrEqual(0);
    expect(fit.samples).toBe(30);
  });

  it('stays near the prior on a few near-silent intervals (a handful of streamed tokens, a few hundred bytes)', () => {
    const m = new OverheadModel();
    for (let i = 0; i < 3; i++) m.record({ cpuMs: 6, wallMs: 1000, messagesIn: 1, messagesOut: 16, bytesIn: 160, bytesOut: 128 });
    const fit = m.fit();
    expect(fit.samples).toBe(3);
    expect(fit.msPerKibIn).toBeLessThan(2 * OVERHEAD_PRIOR.msPerKibIn);
    expect(fit.msPerKibOut).toBeLessThan(2 * OVERHEAD_PRIOR.msPerKibOut);
    expect(fit.msPerMessageIn).toBeLessThan(2 * OVERHEAD_PRIOR.msPerMessageIn);
  });

  it('ignores intervals that cannot be measured', () => {
    const m = new OverheadModel();
    m.record({ cpuMs: Number.NaN, wallMs: 1000, messagesIn: 1, messagesOut: 1, bytesIn: 0, bytesOut: 0 });
    m.record({ cpuMs: 5, wallMs: 0, messagesIn: 1, messagesOut: 1, bytesIn: 0, bytesOut: 0 });
    expect(m.fit().samples).toBe(0);
  });

  it('reads the main thread CPU time from /proc, increasing with work', () => {
    const a = mainThreadCpuMs();
    expect(a).toBeDefined();
    const until = performance.now() + 60;
    let x = 0;
    while (performance.now() < until) x += Math.sqrt(x + 1);
    expect(x).toBeGreaterThan(0);
    expect(mainThreadCpuMs()!).toBeGreaterThan(a!);
  });
});
