import { request, type ClientRequest } from 'node:http';
import { connect as tcpConnect } from 'node:net';
import { ClientProfile, ServerLoad, Subjects } from '@tandem/protocol';
import { capturingLogger, clientProfile, eventually, scrapeMetrics, serverLoad, stageTimes } from '@tandem/testkit';
import { PlannerDashboard, type DashboardSnapshot } from '../src';
import { SHORT_CLASS, startLivePlanner, THREE_STAGES, type LivePlanner } from './fixtures';

// The dashboard's HTTP side against a real planner fed over a real nats-server: its event
// stream (/events) is bounded (a stream limit, heartbeats, every stream ended on stop, no
// stream left behind by a client that goes), and its answers carry the headers that keep
// anything from elsewhere out of the page. The page itself is tested in a browser
// (dashboard.browser.spec.ts).

/** One /events stream read as it arrives: its status, snapshots, heartbeat comments and end. */
interface EventStream {
  readonly status: Promise<number>;
  readonly snapshots: DashboardSnapshot[];
  heartbeats: number;
  ended: boolean;
  readonly req: ClientRequest;
  close(): void;
}

function openEvents(port: number): EventStream {
  let setStatus!: (n: number) => void;
  const s: EventStream = {
    status: new Promise((resolve) => (setStatus = resolve)),
    snapshots: [],
    heartbeats: 0,
    ended: false,
    req: request({ host: '127.0.0.1', port, path: '/events', agent: false }),
    close: () => s.req.destroy(),
  };
  let buf = '';
  s.req.on('response', (res) => {
    setStatus(res.statusCode ?? 0);
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => {
      buf += chunk;
      let i: number;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (block.startsWith(': heartbeat')) s.heartbeats++;
        const data = /^data: (.*)$/m.exec(block);
        if (/^event: snapshot$/m.test(block) && data) s.snapshots.push(JSON.parse(data[1]) as DashboardSnapshot);
      }
    });
    res.on('end', () => (s.ended = true));
    res.on('close', () => (s.ended = true));
  });
  s.req.on('error', () => (s.ended = true));
  s.req.end();
  return s;
}

const profile = (clientId: string, ms = [1, 5, 100], clientClass = 'phone'): ClientProfile => clientProfile({ clientId, clientClass, stages: stageTimes(ms) });

describe('planner dashboard: event stream bounds and headers, with real telemetry over NATS', () => {
  let live: LivePlanner;
  let dashboard: PlannerDashboard;
  let port: number;
  const logs = capturingLogger('info');
  const streams: EventStream[] = [];
  const open = (): EventStream => {
    const s = openEvents(port);
    streams.push(s);
    return s;
  };

  beforeAll(async () => {
    live = await startLivePlanner();
    dashboard = new PlannerDashboard({
      source: live.server,
      info: { modelId: 'm', algorithm: 'dp', stages: THREE_STAGES.map((s) => s.name), classes: [SHORT_CLASS], attainmentTarget: 0.9 },
      log: logs.log,
      host: '127.0.0.1',
      port: 0,
      maxStreams: 2,
      intervalMs: 20,
      heartbeatMs: 100,
    });
    port = await dashboard.start();
    const load = serverLoad({ utilisation: 0.25, queueDepth: 3 });
    live.nc.publish(Subjects.serverLoad(load.serverId), ServerLoad.encode(load).finish());
    live.nc.publish(Subjects.clientProfile('dev-a'), ClientProfile.encode(profile('dev-a')).finish());
    await eventually(() => live.server.plans().length === 1, { what: "dev-a's first plan", timeoutMs: 5000 });
  });

  afterAll(async () => {
    for (const s of streams) s.close();
    await dashboard?.stop();
    await live?.stop();
  });

  it("streams the planner's state at once, then every change, with heartbeats while nothing changes", async () => {
    const s = open();
    expect(await s.status).toBe(200);
    await eventually(() => s.snapshots.length >= 1, { what: 'the first snapshot', timeoutMs: 3000 });
    const first = s.snapshots[0];
    expect(first.clients.map((c) => [c.clientId, c.clientClass, c.classes[0].placement])).toEqual([['dev-a', 'phone', 'CCS']]);
    expect(first.server).toMatchObject({ serverId: 'srv', utilisation: 0.25, queueDepth: 3 });
    expect(first.classes[0]).toMatchObject({ name: 'short', slaMs: 100, clients: 1, attainment: null });
    // Nothing changes: only heartbeats (every 100 ms of silence), no repeated snapshot.
    const before = s.snapshots.length;
    await eventually(() => s.heartbeats >= 2, { what: 'two heartbeats', timeoutMs: 3000 });
    expect(s.snapshots.length).toBe(before);
    // A second client appears on the open stream.
    live.nc.publish(Subjects.clientProfile('dev-b'), ClientProfile.encode(profile('dev-b')).finish());
    await eventually(() => s.snapshots.at(-1)?.clients.some((c) => c.clientId === 'dev-b'), { what: 'dev-b on the stream', timeoutMs: 3000 });
    expect(s.snapshots.at(-1)?.clientsTotal).toBe(2);
    s.close();
    await eventually(() => dashboard.openStreams === 0, { what: 'the closed stream forgotten', timeoutMs: 3000 });
  });

  it('refuses a stream past the limit with 503, and takes one again once a stream closed', async () => {
    const a = open();
    const b = open();
    expect([await a.status, await b.status]).toEqual([200, 200]);
    await eventually(() => dashboard.openStreams === 2, { what: 'two streams open', timeoutMs: 3000 });
    const c = openEvents(port);
    streams.push(c);
    expect(await c.status).toBe(503);
    await eventually(() => c.ended, { what: 'the refused stream ended', timeoutMs: 3000 });
    expect(dashboard.counters.refused).toBe(1);
    expect(logs.lines().some((l) => l.msg === 'refused a dashboard stream: too many open' && l.limit === 2)).toBe(true);
    a.close();
    await eventually(() => dashboard.openStreams === 1, { what: 'the closed stream forgotten', timeoutMs: 3000 });
    const d = open();
    expect(await d.status).toBe(200);
    await eventually(() => d.snapshots.length >= 1, { what: "the new stream's first snapshot", timeoutMs: 3000 });
    b.close();
    d.close();
    await eventually(() => dashboard.openStreams === 0, { what: 'every stream forgotten', timeoutMs: 3000 });
  });

  it('serves the page and its files with a strict content security policy, and refuses other paths and methods', async () => {
    const page = await scrapeMetrics(port, '127.0.0.1', '/');
    expect(page.status).toBe(200);
    expect(page.type).toBe('text/html; charset=utf-8');
    expect(page.body).toContain('<script src="dashboard.js" defer></script>');
    for (const [path, type] of [
      ['/dashboard.js', 'text/javascript; charset=utf-8'],
      ['/dashboard.css', 'text/css; charset=utf-8'],
      ['/snapshot.json', 'application/json'],
    ]) {
      const r = await scrapeMetrics(port, '127.0.0.1', path);
      expect([path, r.status, r.type]).toEqual([path, 200, type]);
    }
    const snap = JSON.parse((await scrapeMetrics(port, '127.0.0.1', '/snapshot.json')).body) as DashboardSnapshot;
    expect(snap.clients.map((c) => c.clientId)).toEqual(['dev-a', 'dev-b']);
    const csp = await new Promise<string>((resolve, reject) => {
      request({ host: '127.0.0.1', port, path: '/', agent: false }, (res) => {
        res.resume();
        resolve(String(res.headers['content-security-policy']));
      })
        .on('error', reject)
        .end();
    });
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("default-src 'none'");
    expect((await scrapeMetrics(port, '127.0.0.1', '/nope')).status).toBe(404);
    expect((await scrapeMetrics(port, '127.0.0.1', '/events', 'POST')).status).toBe(405);
  });

  it('ends every open stream on stop and closes its port', async () => {
    const a = open();
    expect(await a.status).toBe(200);
    await eventually(() => dashboard.openStreams === 1, { what: 'one stream open', timeoutMs: 3000 });
    await dashboard.stop();
    expect(dashboard.openStreams).toBe(0);
    await eventually(() => a.ended, { what: 'the stream ended by stop', timeoutMs: 3000 });
    const refused = await new Promise<boolean>((resolve) => {
      const sock = tcpConnect(port, '127.0.0.1');
      sock.once('connect', () => {
        sock.destroy();
        resolve(false);
      });
      sock.once('error', () => resolve(true));
    });
    expect(refused).toBe(true);
    await dashboard.stop(); // idempotent
  });

  it('refuses options that are not positive integers, naming the option and the value', () => {
    const base = {
      source: live.server,
      info: { modelId: 'm', algorithm: 'dp', stages: [], classes: [], attainmentTarget: 0.9 },
      log: logs.log,
      host: '127.0.0.1',
      port: 0,
    };
    expect(() => new PlannerDashboard({ ...base, maxStreams: 0 })).toThrow('PlannerDashboardOptions.maxStreams must be an integer >= 1, given 0');
    expect(() => new PlannerDashboard({ ...base, intervalMs: 0.5 })).toThrow('PlannerDashboardOptions.intervalMs must be an integer >= 1, given 0.5');
  });
});
