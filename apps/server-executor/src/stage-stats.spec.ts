import { StretchMeter } from './stage-stats';

describe('StretchMeter', () => {
  it('is 0 until measured, then the ratio of service time to compute per kind', () => {
    const m = new StretchMeter(0.5);
    expect(m.interval()).toEqual({ short: 0, long: 0 });
    // two decode steps batched together: each waited the whole 10 ms call, its compute is 5 ms
    m.record({ serviceMs: 10, computeMs: 5, long: false });
    m.record({ serviceMs: 10, computeMs: 5, long: false });
    m.record({ serviceMs: 40, computeMs: 10, long: true });
    expect(m.interval()).toEqual({ short: 2, long: 4 });
  });

  it('averages across intervals, moves toward 1 when an interval has no steps of a kind, and never reports below 1', () => {
    const m = new StretchMeter(0.5);
    m.record({ serviceMs: 30, computeMs: 10, long: false });
    expect(m.interval().short).toBe(3);
    m.record({ serviceMs: 10, computeMs: 10, long: false });
    expect(m.interval().short).toBe(2); // 3 + 0.5 (1 - 3)
    expect(m.interval().short).toBe(1.5); // no decode step: toward 1
    m.record({ serviceMs: 1, computeMs: 10, long: false }); // a clock glitch cannot pull it below 1
    expect(m.interval().short).toBe(1.25);
    m.record({ serviceMs: 5, computeMs: 0, long: false }); // no compute: not a measurement
    m.reset();
    expect(m.interval()).toEqual({ short: 0, long: 0 });
  });
});
