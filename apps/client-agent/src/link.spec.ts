import { PROBE_AGREEMENT, PROBE_MAX_SAMPLES, PROBE_SAMPLES, probeSettled } from './client-agent';
import { LinkEstimator } from './link';

describe('LinkEstimator', () => {
  it('takes latency from the smallest round trip and throughput from the fastest transfer', () => {
    const e = new LinkEstimator();
    for (const rtt of [30, 21, 45]) e.recordRtt(rtt);
    expect(e.latencyMs).toBe(10.5);
    // 100 kB up in 40 ms of transfer (+21 ms of latency both ways), then a slow sample from a busy host
    e.recordTransfer(100_000, 8, 61);
    e.recordTransfer(100_000, 8, 221);
    expect(e.estimate().up.bytesPerMs).toBeCloseTo(2500, 6);
    // 100 kB up and 200 kB down in 81 ms: 21 latency + 40 up (at 2500 B/ms) + 20 down
    e.recordTransfer(100_000, 200_000, 81);
    expect(e.estimate().down.bytesPerMs).toBeCloseTo(200_000 / 20, 6);
  });

  it('ignores transfers too small to measure and falls back until it has a sample', () => {
    const e = new LinkEstimator(1e6);
    e.recordTransfer(1000, 8, 50);
    expect(e.estimate().up.bytesPerMs).toBe(1e6);
    expect(e.measured()).toEqual({ up: false, down: false });
    e.recordTransfer(0, 100_000, 60); // a download cannot be told apart before the upload is measured
    expect(e.measured()).toEqual({ up: false, down: false });
    e.recordTransfer(100_000, 0, 50);
    expect(e.measured()).toEqual({ up: true, down: false });
    e.recordTransfer(0, 100_000, 20);
    expect(e.measured()).toEqual({ up: true, down: true });
    expect(e.estimate().down.bytesPerMs).toBeCloseTo(5000, 6);
  });

  it("takes a step's overhead as the median of what split steps spent beyond the link's modelled time, never below 0", () => {
    const e = new LinkEstimator(1e6);
    expect(e.stepOverheadMs).toBeUndefined();
    for (const rtt of [21, 30]) e.recordRtt(rtt); // 10.5 ms each way
    e.recordTransfer(100_000, 8, 61); // 2500 B/ms up (and down, until measured)
    // 10,000 B up (4 ms) and 8 down: 25.0032 ms of link; 28, 26, 45 ms outside the server.
    for (const outside of [28, 26, 45]) e.recordStep(10_000, 8, outside);
    expect(e.stepOverheadMs).toBeCloseTo(3 - 0.0032, 6);
    e.recordStep(10_000, 8, 15); // faster than the link model: 0
    expect(e.stepOverheadMs).toBeCloseTo((1 - 0.0032 + 3 - 0.0032) / 2, 6);
  });

  it('forgets samples older than its window', () => {
    const e = new LinkEstimator(1e6, 4);
    e.recordTransfer(100_000, 8, 10); // 10,000 B/ms
    for (let i = 0; i < 4; i++) e.recordTransfer(100_000, 8, 100); // 1,000 B/ms
    expect(e.estimate().up.bytesPerMs).toBeCloseTo(1000, 6);
  });
});

describe('probeSettled (when a link probe has timed a direction enough)', () => {
  it('needs PROBE_SAMPLES round trips whose two fastest agree within PROBE_AGREEMENT, whatever the slow ones', () => {
    expect(probeSettled([])).toBe(false);
    expect(probeSettled([70])).toBe(false);
    expect(probeSettled([70, 72])).toBe(true); // 2.9 % apart
    expect(probeSettled([70, 90])).toBe(false); // the second slowed by a busy host: time another
    expect(probeSettled([90, 70, 150, 73])).toBe(true); // the fastest two, 70 and 73
    expect(probeSettled([70, 70 * (1 + PROBE_AGREEMENT)])).toBe(true);
    expect(probeSettled([70, 70 * (1 + PROBE_AGREEMENT) + 0.01])).toBe(false);
    expect(PROBE_MAX_SAMPLES).toBeGreaterThan(PROBE_SAMPLES);
  });
});
