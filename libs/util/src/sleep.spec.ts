import { settledWithin, sleep } from './sleep';

describe('settledWithin', () => {
  it('is true for a promise that fulfils or rejects in time, false for one that does not', async () => {
    expect(await settledWithin(sleep(5), 1000)).toBe(true);
    expect(await settledWithin(Promise.reject(new Error('no')), 1000)).toBe(true);
    const t0 = performance.now();
    expect(await settledWithin(new Promise(() => undefined), 30)).toBe(false);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(29);
  });
});

describe('sleep with a signal', () => {
  it('rejects with the reason as soon as the signal aborts, and at once when it already has', async () => {
    const ac = new AbortController();
    const t0 = performance.now();
    const slept = sleep(10_000, ac.signal);
    setTimeout(() => ac.abort(new Error('closed')), 10);
    await expect(slept).rejects.toThrow('closed');
    expect(performance.now() - t0).toBeLessThan(5_000);
    await expect(sleep(10_000, ac.signal)).rejects.toThrow('closed');
    await expect(sleep(0, ac.signal)).rejects.toThrow('closed');
  });

  it('resolves after the time when the signal does not abort', async () => {
    const t0 = performance.now();
    await sleep(20, new AbortController().signal);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(19);
  });
});
