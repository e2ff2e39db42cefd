import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { env } from './env';
import type { Logger } from './logger';

export { Counter, Gauge, Histogram, Registry } from 'prom-client';

/**
 * Buckets of the latency histograms, seconds: 1 ms to 2 min, about ×2.5 apart (a decode step
 * of a small model is a few ms, a long generation on a slow device a minute).
 */
export const LATENCY_BUCKETS_S: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

/** A histogram of latencies in seconds (LATENCY_BUCKETS_S) by `labelNames`, registered in `registry`. */
export function latencyHistogram<T extends string = string>(registry: Registry, name: string, help: string, labelNames: readonly T[] = []): Histogram<T> {
  return new Histogram({ name, help, labelNames, buckets: [...LATENCY_BUCKETS_S], registers: [registry] });
}

/** A counter by `labelNames`, registered in `registry`. */
export function counter<T extends string = string>(registry: Registry, name: string, help: string, labelNames: readonly T[] = []): Counter<T> {
  return new Counter({ name, help, labelNames, registers: [registry] });
}

/** A metric's figures by the value of its one label, read when scraped: a label value no longer given is dropped. */
export type LabelledFigures = () => Iterable<readonly [label: string, figure: number]>;

/** What a metric read when scraped needs of prom-client's Counter and Gauge. */
interface ReadMetric {
  reset(): void;
  inc(labels: Record<string, string>, value: number): void;
}

/**
 * A counter or gauge registered in `registry` that reads its figures, state kept elsewhere,
 * when scraped: `figures()` by `labelName`, or the one figure of `figures()` without a label.
 */
function readMetric(kind: 'counter' | 'gauge', registry: Registry, name: string, help: string, labelName: string | undefined, figures: LabelledFigures): void {
  const config = {
    name,
    help,
    labelNames: labelName === undefined ? [] : [labelName],
    registers: [registry],
    collect(this: ReadMetric) {
      // A counter cannot be set: each figure is added to the zero the reset leaves, for a gauge too.
      this.reset();
      for (const [label, figure] of figures()) this.inc(labelName === undefined ? {} : { [labelName]: label }, figure);
    },
  };
  if (kind === 'counter') new Counter(config);
  else new Gauge(config);
}

/** A gauge registered in `registry` that reads `value()` when scraped. */
export function readGauge(registry: Registry, name: string, help: string, value: () => number): void {
  readMetric('gauge', registry, name, help, undefined, () => [['', value()]]);
}

/** A gauge by `labelName` registered in `registry` that reads `figures()` when scraped. */
export function readGaugeBy(registry: Registry, name: string, help: string, labelName: string, figures: LabelledFigures): void {
  readMetric('gauge', registry, name, help, labelName, figures);
}

/** A counter registered in `registry` that reads `total()`, a count kept elsewhere, when scraped. */
export function readCounter(registry: Registry, name: string, help: string, total: () => number): void {
  readMetric('counter', registry, name, help, undefined, () => [['', total()]]);
}

/** A counter by `labelName` registered in `registry` that reads `totals()`, counts kept elsewhere, when scraped. */
export function readCounterBy(registry: Registry, name: string, help: string, labelName: string, totals: LabelledFigures): void {
  readMetric('counter', registry, name, help, labelName, totals);
}

/** The variable of a service's metrics port: unset is off, 0 picks a free port (logged). */
export function metricsPortEnv(addrVar: string): ReturnType<typeof env.optionalInt> {
  return env.optionalInt(
    `Port of the Prometheus endpoint (GET /metrics, text format) on the host of ${addrVar}; 0 picks a free port (logged); unset: no endpoint`,
    0,
    65_535,
  );
}

/** The host of a gRPC listen address `host:port` (`[v6]:port` gives the v6 address without brackets). */
export function hostOf(address: string): string {
  const v6 = /^\[([^\]]*)\](?::\d*)?$/.exec(address);
  if (v6) return v6[1];
  const i = address.lastIndexOf(':');
  return i < 0 ? address : address.slice(0, i);
}

/**
 * One service's Prometheus metrics: the registry its metrics are registered in (always there,
 * so code observes unconditionally and tests read it directly; the process's CPU, memory,
 * event-loop lag and GC join it when the endpoint starts) and, once started, the HTTP
 * endpoint serving it: `GET /metrics` in the text exposition format; anything else 404 (or
 * 405 for another method on /metrics). `stop` closes the endpoint and its connections.
 */
export class MetricsEndpoint {
  readonly registry = new Registry();
  private server: Server | undefined;
  private boundPort: number | undefined;
  private processMetrics = false;

  constructor(private readonly log?: Logger) {}

  /** The port serving /metrics, or undefined while not started. */
  get port(): number | undefined {
    return this.boundPort;
  }

  /** Serves /metrics on host:port (0 picks a free port); resolves with the bound port. */
  async start(host: string, port: number): Promise<number> {
    if (this.server) throw new Error('the metrics endpoint is already started');
    if (!this.processMetrics) {
      // The process's own figures, under prom-client's standard names (process_cpu_seconds_total,
      // process_resident_memory_bytes, nodejs_eventloop_lag_p99_seconds, nodejs_gc_duration_seconds,
      // nodejs_heap_size_used_bytes, ...): registered once the endpoint serves them, so a service
      // without an endpoint runs no event-loop monitor.
      collectDefaultMetrics({ register: this.registry });
      this.processMetrics = true;
    }
    const server = createServer((req, res) => {
      const path = (req.url ?? '').split('?')[0];
      if (path !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: the metrics are at /metrics\n');
        return;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(req.method === 'HEAD' ? undefined : text),
        (err: unknown) => {
          this.log?.error({ err }, 'collecting metrics failed');
          res.writeHead(500, { 'content-type': 'text/plain' }).end('collecting metrics failed\n');
        },
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    this.boundPort = (server.address() as AddressInfo).port;
    this.log?.info({ host, port: this.boundPort }, 'metrics endpoint listening (GET /metrics)');
    return this.boundPort;
  }

  /** Closes the endpoint (open keep-alive connections too). Idempotent. */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    this.boundPort = undefined;
    await closeHttpServer(server);
  }
}

/** Closes an HTTP server and every connection it holds open (keep-alive, event streams); resolves once closed. */
export function closeHttpServer(server: Server): Promise<void> {
  return new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
