import { ExecutorMetrics } from '@tandem/server-executor';
import { MetricsEndpoint, Registry } from '@tandem/service-kit';
import { freePort } from '@tandem/testkit';
import { gcPausesBetween, gcPausesOf, scrapeGcPauses, sumGcPauses } from '../src/gc-pauses';
import { gcSection } from '../src/report';
import type { RateResult } from '../src/run';

/** An executor's metrics as its /metrics prints them (the same registry code, no process). */
function executorMetrics(): { metrics: ExecutorMetrics; text: () => Promise<string> } {
  const registry = new Registry();
  const metrics = new ExecutorMetrics(registry, { activeSessions: () => 0, queueDepth: () => 0, kvBytes: () => ({ used: 0, limit: 1 }) });
  return { metrics, text: () => registry.metrics() };
}

describe("reading the executor's garbage-collection pauses from its /metrics", () => {
  it('sums the kinds per thread, counts the pauses over 10 ms, and takes differences between readings', async () => {
    const { metrics, text } = executorMetrics();
    const zero = gcPausesOf(await text());
    expect(zero).toEqual({ main: { count: 0, seconds: 0, long: 0 }, engine: { count: 0, seconds: 0, long: 0 } });
    metrics.gcPause('engine', 'major', 15);
    metrics.gcPause('engine', 'minor', 1);
    metrics.gcPause('main', 'incremental', 2);
    const first = gcPausesOf(await text());
    expect(first?.engine.count).toBe(2);
    expect(first?.engine.seconds).toBeCloseTo(0.016, 9);
    expect(first?.engine.long).toBe(1);
    expect(first?.main).toEqual({ count: 1, seconds: expect.closeTo(0.002, 9) as number, long: 0 });
    metrics.gcPause('main', 'major', 40);
    const second = gcPausesOf(await text());
    if (!first || !second) throw new Error('no pauses read');
    const d = gcPausesBetween(first, second);
    expect(d.engine).toEqual({ count: 0, seconds: 0, long: 0 });
    expect(d.main.count).toBe(1);
    expect(d.main.long).toBe(1);
    expect(d.main.seconds).toBeCloseTo(0.04, 9);
    expect(sumGcPauses([d, d]).main.count).toBe(2);
  });

  it('reads them from a live /metrics endpoint, and says undefined where none answers', async () => {
    const endpoint = new MetricsEndpoint();
    const metrics = new ExecutorMetrics(endpoint.registry, { activeSessions: () => 0, queueDepth: () => 0, kvBytes: () => ({ used: 0, limit: 1 }) });
    await endpoint.start('127.0.0.1', 0);
    try {
      metrics.gcPause('engine', 'minor', 3);
      const read = await scrapeGcPauses(endpoint.port ?? 0);
      expect(read?.engine.count).toBe(1);
      expect(read?.engine.seconds).toBeCloseTo(0.003, 9);
    } finally {
      await endpoint.stop();
    }
    expect(await scrapeGcPauses(await freePort())).toBeUndefined();
  });

  it('says undefined for an exposition without the histogram (an older executor)', () => {
    expect(gcPausesOf('# TYPE tandem_executor_batch_size histogram\ntandem_executor_batch_size_count 3\n')).toBeUndefined();
  });

  it('reports the pauses per run, in ms per second of the run, and nothing when no run read them', () => {
    const row = {
      repeat: 0,
      policy: 'dp',
      rate: 2,
      serverCpuS: 5,
      serverCpuUtilisation: 0.5, // 10 s of wall time
      serverGcPauses: { engine: { count: 40, seconds: 0.3, long: 7 }, main: { count: 9, seconds: 0.05, long: 0 } },
    } as unknown as RateResult;
    const md = gcSection([row], false).join('\n');
    expect(md).toContain('## Server garbage collection');
    expect(md).toContain('| dp | 2 | 40 | 30.0 | 7 | 9 | 5.0 | 0 |');
    expect(gcSection([{ ...row, serverGcPauses: null }], false)).toEqual([]);
  });
});
