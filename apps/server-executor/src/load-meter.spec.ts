import { LoadMeter, QueueWaitMeter, StepTotals, StretchMeter, type ExecutorCounters } from './load-meter';

type Step = { serviceMs: number; nominalMs: number; positions: number; long: boolean; whole: boolean };
/** A decode step through every stage (an all-server step). */
const decode = (serviceMs: number, nominalMs: number): Step => ({ serviceMs, nominalMs, positions: 1, long: false, whole: true });
/** A decode step through a split's server range. */
const splitDecode = (serviceMs: number, nominalMs: number): Step => ({ ...decode(serviceMs, nominalMs), whole: false });
const NONE = { decodeStretch: 0, promptStretch: 0, longPromptStretch: 0, splitDecodeStretch: 0 };
/** Folds one interval of these finished steps into the meter. */
const interval = (m: StretchMeter, ...steps: Step[]) => {
  const t = new StepTotals();
  for (const s of steps) t.record({ ...s, queueMs: 0 });
  const { serviceMs, nominalMs } = t.snapshot();
  return m.interval(serviceMs, nominalMs);
};

describe('StretchMeter', () => {
  it('is 0 until measured, then the ratio of service time to compute per kind of step', () => {
    const m = new StretchMeter(0.5);
    expect(interval(m)).toEqual(NONE);
    // two decode steps and a 30-position prompt in one 32 ms call: each waited 32 ms
    const s = interval(
      m,
      decode(32, 1),
      decode(32, 1),
      { serviceMs: 32, nominalMs: 30, positions: 30, long: false, whole: true },
      { serviceMs: 40, nominalMs: 10, positions: 256, long: true, whole: true },
    );
    expect(s.decodeStretch).toBe(32);
    expect(s.promptStretch).toBeCloseTo(32 / 30, 12);
    expect(s.longPromptStretch).toBe(4);
    expect(s.splitDecodeStretch).toBe(0);
  });

  it("measures a split's decode steps apart from all-server ones: many all-server steps do not hide a split's waits", () => {
    const m = new StretchMeter(0.5);
    // Ten all-server steps that ran as priced, and one split range that waited behind them at each stage.
    const s = interval(m, ...Array.from({ length: 10 }, () => decode(9, 9)), splitDecode(20, 5));
    expect(s.decodeStretch).toBe(1);
    expect(s.splitDecodeStretch).toBe(4);
    // An interval with all-server steps only: the split kind moves toward their measure (what it would have waited behind), not toward 1.
    expect(interval(m, decode(18, 9)).splitDecodeStretch).toBe(4 + 0.5 * (2 - 4));
    // And the other way round; with neither, both move toward 1.
    expect(interval(m, splitDecode(15, 5)).decodeStretch).toBe(1.5 + 0.5 * (3 - 1.5));
    const none = interval(m);
    expect(none.decodeStretch).toBe(2.25 + 0.5 * (1 - 2.25));
    expect(none.splitDecodeStretch).toBe(3 + 0.5 * (1 - 3));
  });

  it('averages across intervals, moves toward 1 when an interval has no steps of a kind, and never reports below 1', () => {
    const m = new StretchMeter(0.5);
    expect(interval(m, decode(30, 10)).decodeStretch).toBe(3);
    expect(interval(m, decode(10, 10)).decodeStretch).toBe(2); // 3 + 0.5 (1 - 3)
    expect(interval(m).decodeStretch).toBe(1.5); // no decode step: toward 1
    expect(interval(m, decode(1, 10)).decodeStretch).toBe(1.25); // a clock glitch cannot pull it below 1
    expect(interval(m, decode(5, 0)).decodeStretch).toBe(1.125); // a stage without a figure yet: not a measurement
    expect(interval(new StretchMeter(0.5))).toEqual(NONE);
  });
});

describe('QueueWaitMeter', () => {
  /** Folds one interval of these finished steps (each with its queue wait) into the meter. */
  const waits = (m: QueueWaitMeter, ...steps: (Step & { queueMs: number })[]) => {
    const t = new StepTotals();
    for (const s of steps) t.record(s);
    const { kindQueueMs, kindCount } = t.snapshot();
    return m.interval(kindQueueMs, kindCount);
  };
  const prompt = (queueMs: number, long = false) => ({ queueMs, serviceMs: 9, nominalMs: 9, positions: 40, long, whole: true });

  it("measures each kind's wait apart: a split's decode steps that wait for calls under way are not hidden by many all-server steps that do not", () => {
    const m = new QueueWaitMeter(0.5);
    expect(waits(m)).toEqual({ decodeMs: 0, promptMs: 0, longPromptMs: 0, splitDecodeMs: 0 });
    const first = waits(
      m,
      ...Array.from({ length: 18 }, () => ({ queueMs: 0.5, ...decode(5, 5) })),
      { queueMs: 6, ...splitDecode(5, 5) },
      { queueMs: 4, ...splitDecode(5, 5) },
      prompt(8),
      prompt(30, true),
    );
    // The mean over all 22 steps is 2.64 ms: what a split step would have been priced by.
    expect(first).toEqual({ decodeMs: 0.5, promptMs: 8, longPromptMs: 30, splitDecodeMs: 5 });
    // A kind without steps in an interval moves toward what any step waited then (here 1 ms), not toward 0.
    const second = waits(m, { queueMs: 1, ...decode(5, 5) });
    expect(second).toEqual({ decodeMs: 0.75, promptMs: 4.5, longPromptMs: 15.5, splitDecodeMs: 3 });
    // No step at all: toward 0.
    expect(waits(m)).toEqual({ decodeMs: 0.375, promptMs: 2.25, longPromptMs: 7.75, splitDecodeMs: 1.5 });
  });
});

describe('LoadMeter', () => {
  it('reports the interval between two snapshots of counters that only grow, so readers do not disturb each other', () => {
    const steps = new StepTotals();
    const read = (atMs: number, busyMs: number): ExecutorCounters => ({
      atMs,
      busyMs,
      cpuMs: undefined,
      traffic: { messagesIn: 0, bytesIn: 0, messagesOut: 0, bytesOut: 0, kvBytesIn: 0, kvBytesOut: 0 },
      steps: steps.snapshot(),
    });
    const start = read(0, 0);
    const [a, b] = [new LoadMeter(start, false), new LoadMeter(start, false)];
    steps.record({ queueMs: 4, ...decode(2, 1) });
    const now = read(100, 50);
    expect(a.next(now)).toMatchObject({
      utilisation: 0.5,
      meanQueueMs: 4,
      decodeStretch: 2,
      queueWaits: { decodeMs: 4, promptMs: 4, longPromptMs: 4, splitDecodeMs: 4 },
    });
    expect(b.next(now)).toMatchObject({ utilisation: 0.5, meanQueueMs: 4, decodeStretch: 2 });
    expect(a.next(read(200, 50))).toMatchObject({ utilisation: 0, meanQueueMs: 0, decodeStretch: 1.7 }); // no step: toward 1
  });
});
