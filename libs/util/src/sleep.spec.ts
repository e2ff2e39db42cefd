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
