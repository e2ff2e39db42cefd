import { median, quantile } from './stats';

describe('median', () => {
  it('is the middle value, or the mean of the middle two, and leaves its input unsorted', () => {
    const xs = [5, 1, 4];
    expect(median(xs)).toBe(4);
    expect(xs).toEqual([5, 1, 4]);
    expect(median([10, 2, 8, 4])).toBe(6);
    expect(median([7])).toBe(7);
  });
});

describe('quantile', () => {
  it('is the element at rank ⌊q·n⌋ of the sorted sample, the largest at q = 1, NaN when empty, and leaves its input unsorted', () => {
    const xs = Array.from({ length: 100 }, (_, i) => 100 - i); // 100 … 1
    expect(quantile(xs, 0.5)).toBe(51);
    expect(quantile(xs, 0.99)).toBe(100);
    expect(quantile(xs, 1)).toBe(100);
    expect(quantile(xs, 0)).toBe(1);
    expect(xs[0]).toBe(100);
    expect(quantile([3, 1, 2], 0.9)).toBe(3);
    expect(quantile([], 0.5)).toBeNaN();
  });
});
