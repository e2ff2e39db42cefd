import { StretchMeter } from './stage-stats';

const decode = (serviceMs: number, nominalMs: number) => ({ serviceMs, nominalMs, positions: 1, long: false });

describe('StretchMeter', () => {
  it('is 0 until measured, then the ratio of service time to compute per kind of step', () => {
    const m = new StretchMeter(0.5);
    expect(m.interval()).toEqual({ decode: 0, prompt: 0, longPrompt: 0 });
    // two decode steps and a 30-position prompt in one 32 ms call: each waited 32 ms
    m.record(decode(32, 1));
    m.record(decode(32, 1));
    m.record({ serviceMs: 32, nominalMs: 30, positions: 30, long: false });
    m.record({ serviceMs: 40, nominalMs: 10, positions: 256, long: true });
    const s = m.interval();
    expect(s.decode).toBe(32);
    expect(s.prompt).toBeCloseTo(32 / 30, 12);
    expect(s.longPrompt).toBe(4);
  });

  it('averages across intervals, moves toward 1 when an interval has no steps of a kind, and never reports below 1', () => {
    const m = new StretchMeter(0.5);
    m.record(decode(30, 10));
    expect(m.interval().decode).toBe(3);
    m.record(decode(10, 10));
    expect(m.interval().decode).toBe(2); // 3 + 0.5 (1 - 3)
    expect(m.interval().decode).toBe(1.5); // no decode step: toward 1
    m.record(decode(1, 10)); // a clock glitch cannot pull it below 1
    expect(m.interval().decode).toBe(1.25);
    m.record(decode(5, 0)); // a stage without a figure yet: not a measurement
    expect(m.interval().decode).toBe(1.125);
    m.reset();
    expect(m.interval()).toEqual({ decode: 0, prompt: 0, longPrompt: 0 });
  });
});
