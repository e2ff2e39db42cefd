import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { closeHttpServer, type Logger } from '@tandem/service-kit';
import { DASHBOARD_CSS, DASHBOARD_HTML, DASHBOARD_JS } from './dashboard-page';
import { dashboardSnapshot, type DashboardInfo, type DashboardSnapshot, type DashboardSource } from './dashboard-snapshot';

/** Defaults of PlannerDashboardOptions. */
export const DASHBOARD_DEFAULTS = {
  maxStreams: 16,
  intervalMs: 500,
  heartbeatMs: 15_000,
  maxClients: 200,
  maxBufferedBytes: 1 << 20,
} as const;

export interface PlannerDashboardOptions {
  /** The planner state shown (a PlannerServer). */
  readonly source: DashboardSource;
  readonly info: DashboardInfo;
  readonly log: Logger;
  /** Host to listen on (the host of PLANNER_ADDR). */
  readonly host: string;
  /** Port to listen on; 0 picks a free one. */
  readonly port: number;
  /** Most event streams (/events) open at once; one more is answered 503. Default 16. */
  readonly maxStreams?: number;
  /** How often the state is read and, when it changed, sent to every stream, ms. Default 500. */
  readonly intervalMs?: number;
  /** A stream that was sent nothing for this long gets a comment line, so proxies and dead peers are noticed, ms. Default 15000. */
  readonly heartbeatMs?: number;
  /** Most clients listed (all count in the per-class figures). Default 200. */
  readonly maxClients?: number;
  /** A stream whose peer leaves more than this unread is closed (it does not keep up), bytes. Default 1 MiB. */
  readonly maxBufferedBytes?: number;
}

/** One open /events stream. */
interface Stream {
  readonly res: ServerResponse;
  lastWriteMs: number;
}

/** Headers of every answer: nothing from elsewhere may run, frame or be loaded (defence in depth beside escaping). */
const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
} as const;

const ASSETS: Readonly<Record<string, { type: string; body: string }>> = {
  '/': { type: 'text/html; charset=utf-8', body: DASHBOARD_HTML },
  '/index.html': { type: 'text/html; charset=utf-8', body: DASHBOARD_HTML },
  '/dashboard.js': { type: 'text/javascript; charset=utf-8', body: DASHBOARD_JS },
  '/dashboard.css': { type: 'text/css; charset=utf-8', body: DASHBOARD_CSS },
};

/**
 * The planner's live dashboard: a page (`/`, with /dashboard.js and /dashboard.css, embedded
 * in the planner) showing its clients, their plans per request class, the server's load,
 * predicted against observed latency, SLO attainment and shed classes, updated by
 * server-sent events (`/events`: an `event: snapshot` with a DashboardSnapshot as JSON when
 * the state changed, at most every `intervalMs`) and `/snapshot.json` (the same, once).
 *
 * Bounded: at most `maxStreams` streams (one more is answered 503), a heartbeat comment after
 * `heartbeatMs` of silence, a stream whose peer stops reading is closed past
 * `maxBufferedBytes`, and the state is read only while a stream is open. Unauthenticated and
 * read-only: it shows every client's plans, as ListPlans does to an operator (see the
 * planner's config check on PLANNER_DASHBOARD_PORT).
 */
export class PlannerDashboard {
  private server: Server | undefined;
  private boundPort: number | undefined;
  private readonly streams = new Set<Stream>();
  private timer: NodeJS.Timeout | undefined;
  private lastJson = '';
  private readonly log: Logger;
  private readonly o: Required<Pick<PlannerDashboardOptions, keyof typeof DASHBOARD_DEFAULTS>>;
  /** Streams refused (limit reached) and closed for not reading, so far. */
  readonly counters = { refused: 0, slow: 0, sent: 0 };

  constructor(private readonly opts: PlannerDashboardOptions) {
    this.log = opts.log.child({ component: 'dashboard' });
    const d = DASHBOARD_DEFAULTS;
    this.o = {
      maxStreams: opts.maxStreams ?? d.maxStreams,
      intervalMs: opts.intervalMs ?? d.intervalMs,
      heartbeatMs: opts.heartbeatMs ?? d.heartbeatMs,
      maxClients: opts.maxClients ?? d.maxClients,
      maxBufferedBytes: opts.maxBufferedBytes ?? d.maxBufferedBytes,
    };
    for (const k of Object.keys(DASHBOARD_DEFAULTS) as (keyof typeof DASHBOARD_DEFAULTS)[]) {
      const v = this.o[k];
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`PlannerDashboardOptions.${k} must be an integer >= 1, given ${String(v)}`);
    }
  }

  /** The port serving the dashboard, or undefined while not started. */
  get port(): number | undefined {
    return this.boundPort;
  }

  /** Event streams open now. */
  get openStreams(): number {
    return this.streams.size;
  }

  /** The state as the next update would show it. */
  snapshot(): DashboardSnapshot {
    return dashboardSnapshot(this.opts.source, this.opts.info, this.o.maxClients);
  }

  /** Serves the dashboard; resolves with the bound port. @throws the listen error (e.g. EADDRINUSE). */
  async start(): Promise<number> {
    if (this.server) throw new Error('the dashboard is already started');
    const server = createServer((req, res) => this.serve(req, res));
    // Bounds sockets as well as streams: a page, its two assets and a stream per dashboard, and some slack.
    server.maxConnections = this.o.maxStreams * 4 + 16;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port, this.opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    this.boundPort = (server.address() as AddressInfo).port;
    this.timer = setInterval(() => this.tick(), this.o.intervalMs);
    this.timer.unref();
    this.log.info({ host: this.opts.host, port: this.boundPort, url: this.url }, 'dashboard listening');
    return this.boundPort;
  }

  /** The page's URL (undefined while not started). */
  get url(): string | undefined {
    if (this.boundPort === undefined) return undefined;
    const host = this.opts.host.includes(':') ? `[${this.opts.host}]` : this.opts.host === '0.0.0.0' ? '127.0.0.1' : this.opts.host;
    return `http://${host}:${this.boundPort}/`;
  }

  /** Ends every event stream, closes the server and its connections. Idempotent. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    for (const s of this.streams) s.res.end();
    this.streams.clear();
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    this.boundPort = undefined;
    await closeHttpServer(server);
  }

  private serve(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { ...SECURITY_HEADERS, allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    const asset = ASSETS[path];
    if (asset) {
      res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': asset.type }).end(req.method === 'HEAD' ? undefined : asset.body);
      return;
    }
    if (path === '/snapshot.json') {
      const body = this.snapshotJson();
      if (body === undefined) {
        res.writeHead(500, { ...SECURITY_HEADERS, 'content-type': 'text/plain' }).end('reading the planner state failed (logged)\n');
        return;
      }
      res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': 'application/json' }).end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    if (path === '/events') {
      if (req.method === 'HEAD') res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': 'text/event-stream; charset=utf-8' }).end();
      else this.openStream(res);
      return;
    }
    res.writeHead(404, { ...SECURITY_HEADERS, 'content-type': 'text/plain' }).end('not found: the dashboard is at /\n');
  }

  private openStream(res: ServerResponse): void {
    if (this.streams.size >= this.o.maxStreams) {
      this.counters.refused++;
      // The first refusal and every 100th: a page reloaded in a loop must not flood the log.
      if (this.counters.refused % 100 === 1)
        this.log.warn({ open: this.streams.size, limit: this.o.maxStreams, refused: this.counters.refused }, 'refused a dashboard stream: too many open');
      res
        .writeHead(503, { ...SECURITY_HEADERS, 'content-type': 'text/plain', 'retry-after': '10' })
        .end(`too many dashboards open: at most ${this.o.maxStreams} at once\n`);
      return;
    }
    const body = this.snapshotJson();
    if (body === undefined) {
      res.writeHead(500, { ...SECURITY_HEADERS, 'content-type': 'text/plain' }).end('reading the planner state failed (logged)\n');
      return;
    }
    const stream: Stream = { res, lastWriteMs: Date.now() };
    // The only stream: what it is sent first is what the others were sent last (none repeated).
    if (this.streams.size === 0) this.lastJson = body;
    this.streams.add(stream);
    // 'close' comes when the response ended or its connection went, whichever side closed it.
    const drop = (): void => {
      this.streams.delete(stream);
    };
    res.on('close', drop);
    res.on('error', drop);
    res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': 'text/event-stream; charset=utf-8', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    // A lost connection is retried by the browser after 2 s; the first message is the state now.
    this.write(stream, `retry: 2000\n\n${event(body)}`);
  }

  /** The snapshot as JSON, or undefined (logged) when reading the state threw. */
  private snapshotJson(): string | undefined {
    try {
      return JSON.stringify(this.snapshot());
    } catch (err) {
      this.log.error({ err }, 'reading the planner state for the dashboard failed');
      return undefined;
    }
  }

  /** Sends a changed state to every stream, and a heartbeat to those silent for `heartbeatMs`. */
  private tick(): void {
    if (this.streams.size === 0) return;
    const json = this.snapshotJson();
    const now = Date.now();
    const changed = json !== undefined && json !== this.lastJson;
    if (changed) this.lastJson = json;
    for (const s of this.streams) {
      if (changed) this.write(s, event(json));
      else if (now - s.lastWriteMs >= this.o.heartbeatMs) this.write(s, ': heartbeat\n\n');
    }
  }

  private write(s: Stream, text: string): void {
    if (s.res.writableLength > this.o.maxBufferedBytes) {
      this.counters.slow++;
      this.log.warn({ unreadBytes: s.res.writableLength }, 'closed a dashboard stream whose peer does not read');
      this.streams.delete(s);
      s.res.destroy();
      return;
    }
    s.lastWriteMs = Date.now();
    this.counters.sent++;
    s.res.write(text);
  }
}

/** One server-sent event carrying a snapshot (JSON has no raw line breaks: one data line). */
function event(json: string): string {
  return `event: snapshot\ndata: ${json}\n\n`;
}
