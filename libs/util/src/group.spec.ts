import { groupBy } from './group';

describe('groupBy', () => {
  it("keeps each group's items in order and the keys in first-seen order", () => {
    const g = groupBy(['b1', 'a1', 'b2', 'c1', 'a2'], (s) => s[0]);
    expect([...g]).toEqual([
      ['b', ['b1', 'b2']],
      ['a', ['a1', 'a2']],
      ['c', ['c1']],
    ]);
    expect(groupBy([], (s: string) => s).size).toBe(0);
  });

  it('adds to the groups already in `into`, keeping their keys first (empty ones too)', () => {
    const into = new Map<string, number[]>([
      ['odd', []],
      ['none', []],
    ]);
    const g = groupBy([2, 1, 4, 3], (n) => (n % 2 ? 'odd' : 'even'), into);
    expect(g).toBe(into);
    expect([...g]).toEqual([
      ['odd', [1, 3]],
      ['none', []],
      ['even', [2, 4]],
    ]);
  });
});
