import { sampleValue, scrapeMetrics as fetchText } from '@tandem/testkit';
import { Counter, hostOf, loadEnv, MetricsEndpoint, metricsPortEnv, readCounter, readCounterBy, readGauge, readGaugeBy, Registry } from '../src';

describe('MetricsEndpoint', () => {
  it('serves its registry at GET /metrics in the text format, 404 elsewhere, 405 for another method, and closes on stop', async () => {
    const m = new MetricsEndpoint();
    const c = new Counter({ name: 'tandem_test_things_total', help: 'Things', registers: [m.registry] });
    c.inc(3);
    const port = await m.start('127.0.0.1', 0);
    expect(port).toBeGreaterThan(0);
    expect(m.port).toBe(port);
    try {
      const r = await fetchText(port);
      expect(r.status).toBe(200);
      expect(r.type).toContain('text/plain');
      expect(r.body).toContain('# TYPE tandem_test_things_total counter');
      expect(r.body).toMatch(/^tandem_test_things_total 3$/m);
      expect((await fetchText(port, '127.0.0.1', '/')).status).toBe(404);
      expect((await fetchText(port, '127.0.0.1', '/metrics', 'POST')).status).toBe(405);
    } finally {
      await m.stop();
    }
    expect(m.port).toBeUndefined();
    await expect(fetchText(port)).rejects.toThrow(/ECONNREFUSED/);
    await m.stop(); // idempotent
  });

  it("serves the process's CPU, memory and event-loop lag beside the service's metrics, and starts again after a stop", async () => {
    const m = new MetricsEndpoint();
    expect(await m.registry.metrics()).not.toContain('process_cpu_seconds_total');
    for (let round = 0; round < 2; round++) {
      const port = await m.start('127.0.0.1', 0);
      try {
        const body = (await fetchText(port)).body;
        expect(body).toMatch(/^process_cpu_seconds_total \d/m);
        expect(body).toMatch(/^process_resident_memory_bytes [1-9]/m);
        expect(body).toContain('# TYPE nodejs_eventloop_lag_p99_seconds gauge');
        expect(body).toMatch(/^nodejs_heap_size_used_bytes [1-9]/m);
      } finally {
        await m.stop();
      }
    }
  });

  it('refuses a port in use with the listen error', async () => {
    const a = new MetricsEndpoint();
    const port = await a.start('127.0.0.1', 0);
    const b = new MetricsEndpoint();
    try {
      await expect(b.start('127.0.0.1', port)).rejects.toThrow(/EADDRINUSE/);
    } finally {
      await a.stop();
      await b.stop();
    }
  });
});

describe('hostOf', () => {
  it.each([
    ['127.0.0.1:50051', '127.0.0.1'],
    ['0.0.0.0:0', '0.0.0.0'],
    ['localhost:1', 'localhost'],
    ['[::1]:50051', '::1'],
    ['[::]:0', '::'],
  ])('%s is on %s', (addr, host) => expect(hostOf(addr)).toBe(host));
});

describe('metricsPortEnv', () => {
  const schema = { X_METRICS_PORT: metricsPortEnv('X_ADDR') };
  it('is off when unset or empty, a port in 0..65535 otherwise', () => {
    expect(loadEnv(schema, {}).X_METRICS_PORT).toBeUndefined();
    expect(loadEnv(schema, { X_METRICS_PORT: '' }).X_METRICS_PORT).toBeUndefined();
    expect(loadEnv(schema, { X_METRICS_PORT: '0' }).X_METRICS_PORT).toBe(0);
    expect(loadEnv(schema, { X_METRICS_PORT: '9464' }).X_METRICS_PORT).toBe(9464);
    expect(() => loadEnv(schema, { X_METRICS_PORT: '65536' })).toThrow("X_METRICS_PORT must be an integer in 0..65535, given '65536'");
  });
});

describe('metrics read when scraped', () => {
  it('mirror the state they read at each scrape: counters as counters, gauges as gauges, a label value no longer read dropped', async () => {
    const registry = new Registry();
    let total = 3;
    let byReason: Record<string, number> = { a: 1, b: 2 };
    let level = 0.5;
    let byHost = new Map([['h1', 4]]);
    readCounter(registry, 'tandem_test_resumed_total', 'Resumed', () => total);
    readCounterBy(registry, 'tandem_test_dropped_total', 'Dropped', 'reason', () => Object.entries(byReason));
    readGauge(registry, 'tandem_test_level', 'Level', () => level);
    readGaugeBy(registry, 'tandem_test_clients', 'Clients', 'host', () => byHost);
    let text = await registry.metrics();
    expect(text).toContain('# TYPE tandem_test_resumed_total counter');
    expect(text).toContain('# TYPE tandem_test_dropped_total counter');
    expect(text).toContain('# TYPE tandem_test_level gauge');
    expect(text).toContain('# TYPE tandem_test_clients gauge');
    expect(sampleValue(text, 'tandem_test_resumed_total')).toBe(3);
    expect(sampleValue(text, 'tandem_test_dropped_total{reason="a"}')).toBe(1);
    expect(sampleValue(text, 'tandem_test_dropped_total{reason="b"}')).toBe(2);
    expect(sampleValue(text, 'tandem_test_level')).toBe(0.5);
    expect(sampleValue(text, 'tandem_test_clients{host="h1"}')).toBe(4);

    total = 5;
    byReason = { a: 4 };
    level = 0.25;
    byHost = new Map([['h2', 1]]);
    text = await registry.metrics();
    expect(sampleValue(text, 'tandem_test_resumed_total')).toBe(5);
    expect(sampleValue(text, 'tandem_test_dropped_total{reason="a"}')).toBe(4);
    expect(sampleValue(text, 'tandem_test_dropped_total{reason="b"}')).toBeUndefined();
    expect(sampleValue(text, 'tandem_test_level')).toBe(0.25);
    expect(sampleValue(text, 'tandem_test_clients{host="h1"}')).toBeUndefined();
    expect(sampleValue(text, 'tandem_test_clients{host="h2"}')).toBe(1);
  });
});
