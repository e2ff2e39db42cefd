import { seededRandom } from '@tandem/util';
import { DirtyQueue } from './dirty-queue';

describe('DirtyQueue', () => {
  it('behaves as an insertion-ordered Set whose front is taken, over random adds, deletes and takes', () => {
    const rnd = seededRandom(7);
    const q = new DirtyQueue();
    const model = new Set<string>();
    let taken = 0;
    for (let op = 0; op < 20_000; op++) {
      const id = `c${Math.floor(rnd() * 1000)}`;
      const r = rnd();
      if (r < 0.5) {
        q.add(id);
        model.add(id);
      } else if (r < 0.6) {
        expect(q.delete(id)).toBe(model.delete(id));
      } else {
        const want = model.values().next();
        if (!want.done) model.delete(want.value);
        const got = q.shift();
        expect(got).toBe(want.done ? undefined : want.value);
        if (got !== undefined) taken++;
      }
      expect(q.size).toBe(model.size);
      if (op % 2000 === 0) expect(q.toArray()).toEqual([...model]);
    }
    expect(taken).toBeGreaterThan(4000);
    expect(q.toArray()).toEqual([...model]);
  });

  it('puts an id added again after a delete at the back, and keeps the place of one added twice', () => {
    const q = new DirtyQueue();
    for (const id of ['a', 'b', 'c']) q.add(id);
    q.add('a');
    q.delete('b');
    q.add('b');
    expect(q.toArray()).toEqual(['a', 'c', 'b']);
    expect([q.shift(), q.shift(), q.shift(), q.shift()]).toEqual(['a', 'c', 'b', undefined]);
    expect(q.size).toBe(0);
  });
});
