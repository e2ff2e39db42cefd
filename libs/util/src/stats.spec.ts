import { median } from './stats';

describe('median', () => {
  it('is the middle value, or the mean of the middle two, and leaves its input unsorted', () => {
    const xs = [5, 1, 4];
    expect(median(xs)).toBe(4);
    expect(xs).toEqual([5, 1, 4]);
    expect(median([10, 2, 8, 4])).toBe(6);
    expect(median([7])).toBe(7);
  });
});
