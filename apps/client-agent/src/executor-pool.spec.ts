import type { ExecutorServiceClient } from '@tandem/protocol';
import { ExecutorPool } from './executor-pool';

/** A stand-in client that records whether it was closed (the pool's bookkeeping is the subject here; the integration tests use real channels). */
function fakeClients(): { make: (a: string) => ExecutorServiceClient; made: string[]; closed: string[] } {
  const made: string[] = [];
  const closed: string[] = [];
  const make = (a: string): ExecutorServiceClient => {
    made.push(a);
    return { close: () => closed.push(a) } as unknown as ExecutorServiceClient;
  };
  return { make, made, closed };
}

describe('ExecutorPool', () => {
  it('opens one client per address lazily, keeps the configured one, and closes one unused and unnamed for the idle time', () => {
    let now = 0;
    const c = fakeClients();
    const pool = new ExecutorPool({ configured: 'cfg:1', make: c.make, idleMs: 1000, now: () => now });
    expect(c.made).toEqual(['cfg:1']);
    const a1 = pool.acquire('a:1');
    const a2 = pool.acquire('a:1');
    expect(a1?.client).toBe(a2?.client);
    expect(c.made).toEqual(['cfg:1', 'a:1']);
    a1?.release();
    now = 5000;
    pool.sweep();
    expect(c.closed).toEqual([]); // still in use by a2
    a2?.release();
    a2?.release(); // idempotent
    now = 5500;
    pool.named(['a:1']); // the plan followed names it: kept however long
    now = 100_000;
    pool.sweep();
    expect(c.closed).toEqual([]);
    pool.named(['b:1']); // a plan that names it no more: kept idleMs from now
    now = 100_500;
    pool.sweep();
    expect(c.closed).toEqual([]);
    now = 101_100;
    pool.sweep();
    expect(c.closed).toEqual(['a:1']);
    expect(pool.addresses()).toEqual(['cfg:1']);
    now = 1e9;
    pool.sweep();
    expect(pool.addresses()).toEqual(['cfg:1']); // never the configured one
  });

  it('holds at most maxClients: closes the unused one wanted least recently, and refuses when every one is in use', () => {
    let now = 0;
    const c = fakeClients();
    const pool = new ExecutorPool({ configured: 'cfg:1', make: c.make, maxClients: 3, idleMs: 60_000, now: () => now });
    const a = pool.acquire('a:1');
    now = 1;
    const b = pool.acquire('b:1');
    a?.release();
    now = 2;
    b?.release();
    const x = pool.acquire('x:1'); // full: a:1 (wanted at 1) goes, b:1 (at 2) stays
    pool.named(['x:1']);
    expect(c.closed).toEqual(['a:1']);
    const y = pool.acquire('b:1');
    x?.release();
    expect(pool.acquire('z:1')).toBeUndefined(); // cfg (configured), b (in use), x (the plan names it): none may go
    expect(pool.addresses().sort()).toEqual(['b:1', 'cfg:1', 'x:1']);
    y?.release();
    pool.close();
    expect(c.closed.sort()).toEqual(['a:1', 'b:1', 'cfg:1', 'x:1']);
    expect(pool.acquire('cfg:1')).toBeUndefined();
  });
});
