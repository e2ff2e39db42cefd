import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { DemoReport } from '@tandem/demo';
import { canConnect, freePort, startNatsServer, type NatsServerHandle } from '@tandem/testkit';
import { sleep } from '@tandem/util';
import { formatDemoReport } from '../src/views/demo-report';
import { run } from './run-cli';

const BIN = resolve(__dirname, '../bin/tandem.js');

/** Whether something accepts TCP connections on 127.0.0.1:port. */
const listening = (port: number): Promise<boolean> => canConnect('127.0.0.1', port, 5000);

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

interface Spawned {
  readonly code: Promise<number | null>;
  readonly running: () => boolean;
  readonly stdout: () => string;
  readonly stderr: () => string;
  kill(sig: NodeJS.Signals): void;
}

/** `tandem demo ARGS` as its own process, in `cwd` (where it keeps its model cache). */
function spawnDemo(args: string[], cwd: string, env: NodeJS.ProcessEnv): Spawned {
  const child = spawn(process.execPath, [BIN, 'demo', ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => {
    out += b.toString('utf8');
  });
  child.stderr.on('data', (b: Buffer) => {
    err += b.toString('utf8');
  });
  const code = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  const s: Spawned = {
    code,
    running: () => child.exitCode === null && child.signalCode === null,
    stdout: () => out,
    stderr: () => err,
    kill: (sig) => child.kill(sig),
  };
  spawned.push(s);
  return s;
}

const spawned: Spawned[] = [];

/** A demo a failed test left running is interrupted (it then stops its services), killed if it hangs. */
afterEach(async () => {
  for (const s of spawned.splice(0)) {
    if (!s.running()) continue;
    s.kill('SIGINT');
    const t = setTimeout(() => s.kill('SIGKILL'), 15_000);
    await s.code;
    clearTimeout(t);
  }
}, 20_000);

describe('tandem demo', () => {
  let nats: NatsServerHandle;
  let cwd: string;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    nats = await startNatsServer();
    cwd = mkdtempSync(join(tmpdir(), 'tandem-demo-test-'));
    env = { ...process.env, NATS_URL: nats.url };
  });

  afterAll(async () => {
    await nats?.stop();
    if (cwd) rmSync(cwd, { recursive: true, force: true });
  });

  it('runs three devices end to end, reports their generations and leaves no process behind', async () => {
    const demo = spawnDemo(['--preset', 'tiny', '--json'], cwd, env);
    const code = await demo.code;
    if (code !== 0) throw new Error(`demo exited ${code}:\n${demo.stderr()}`);
    const report = JSON.parse(demo.stdout()) as DemoReport;

    expect(report.nats).toEqual({ url: nats.url, startedHere: false });
    expect(report.model).toMatchObject({ preset: 'tiny', dir: join(cwd, '.tandem', 'models', 'tiny-1'), stages: 6 });
    expect(report.agents.map((a) => a.device)).toEqual(['laptop', 'phone', 'kiosk']);
    for (const a of report.agents) {
      expect(a.runs).toHaveLength(2);
      for (const r of a.runs) {
        expect(r.ids).toHaveLength(16);
        expect(r.text.length).toBeGreaterThan(0);
        expect(r.planEpoch).toBeGreaterThan(0);
        expect(r.placement).toMatch(/^[CS]{6}$/);
        expect(r.requestClass).toBe('chat');
        expect(r.slaMs).toBeGreaterThan(0);
        expect(r.slaMet).toBe(r.totalMs <= r.slaMs);
        expect(r.ttftMs).toBeGreaterThan(0);
        expect(r.totalMs).toBeGreaterThanOrEqual(r.ttftMs);
      }
    }
    // Greedy decoding gives the same tokens wherever the stages ran.
    expect(report.identicalOutputs).toBe(true);
    expect(new Set(report.agents.flatMap((a) => a.runs.map((r) => r.ids.join(',')))).size).toBe(1);
    // The planner knew every device when the demo asked it.
    const plans = (report.plans as { plans?: { clientId: string }[] }).plans ?? [];
    expect(plans.map((p) => p.clientId)).toEqual(['kiosk', 'laptop', 'phone']);

    expect(report.services.map((s) => s.name)).toEqual(['server-executor', 'planner', 'agent-laptop', 'agent-phone', 'agent-kiosk']);
    expect(report.killed).toEqual([]);
    expect(report.logDir).toBeNull();
    for (const s of report.services) {
      expect(s.port).toBeGreaterThan(0);
      expect({ service: s.name, alive: alive(s.pid), listening: await listening(s.port) }).toEqual({ service: s.name, alive: false, listening: false });
    }
    // The test's NATS server was used, not stopped.
    expect(await listening(nats.port)).toBe(true);

    // The same report as text names every device's placement and the SLA verdicts.
    const text = formatDemoReport(report);
    for (const a of report.agents) expect(text).toContain(`${a.device} (class ${a.clientClass})`);
    expect(text).toMatch(/^laptop +laptop +1 +\d+ +[CS]{6} /m);
    expect(text).toContain('all produced the same tokens');
  }, 60_000);

  it('prints the planner dashboard URL, and with --stay keeps the services up until SIGINT, then reports and exits 0', async () => {
    const demo = spawnDemo(['--preset', 'tiny', '--plaintext', '--stay', '--json'], cwd, env);
    const staying = (): string | undefined => /--stay: the planner dashboard stays live at (http:\/\/127\.0\.0\.1:\d+\/)/.exec(demo.stderr())?.[1];
    const until = Date.now() + 75_000;
    while (!staying() && Date.now() < until) {
      if (await Promise.race([demo.code.then(() => true), sleep(50).then(() => false)])) break;
    }
    const url = staying();
    if (!url) throw new Error(`the demo did not stay up:\n${demo.stderr()}`);
    expect(demo.stderr()).toContain(`planner dashboard (live while the demo runs): ${url}`);
    // The dashboard answers with the three devices' plans while the demo stays.
    const res = await fetch(`${url}snapshot.json`);
    expect(res.status).toBe(200);
    const snap = (await res.json()) as { clients: { clientId: string; classes: { placement: string }[] }[] };
    expect(snap.clients.map((c) => c.clientId)).toEqual(['kiosk', 'laptop', 'phone']);
    for (const c of snap.clients) for (const k of c.classes) expect(k.placement).toMatch(/^[CS]{6}$/);
    expect(demo.running()).toBe(true);
    demo.kill('SIGINT');
    expect(await demo.code).toBe(0);
    const report = JSON.parse(demo.stdout()) as DemoReport;
    expect(report.agents.map((a) => a.runs.length)).toEqual([2, 2, 2]);
    const port = Number(new URL(url).port);
    expect({ port, listening: await listening(port) }).toEqual({ port, listening: false });
    for (const s of report.services) expect({ service: s.name, alive: alive(s.pid) }).toEqual({ service: s.name, alive: false });
  }, 90_000);

  it('stops every service when interrupted with SIGINT and exits 130', async () => {
    const demo = spawnDemo(['--preset', 'tiny'], cwd, env);
    const started = (): boolean => /agents listening: /.test(demo.stderr());
    const until = Date.now() + 40_000;
    while (!started() && Date.now() < until) {
      if (await Promise.race([demo.code.then(() => true), sleep(50).then(() => false)])) break;
    }
    expect(started()).toBe(true);
    const ports = [...demo.stderr().matchAll(/(?:server-executor|planner|laptop|phone|kiosk) at 127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1]));
    expect(ports).toHaveLength(5); // executor, planner and three agents
    demo.kill('SIGINT');
    expect(await demo.code).toBe(130);
    expect(demo.stderr()).toContain('interrupted; every service has been stopped');
    // Interrupting is no failure: the logs are removed as after a normal run.
    expect(demo.stderr()).not.toContain('service logs kept in');
    const logDir = /service logs: (\S+)/.exec(demo.stderr())?.[1];
    expect(logDir && existsSync(logDir)).toBe(false);
    for (const port of ports) expect({ port, listening: await listening(port) }).toEqual({ port, listening: false });
  }, 60_000);

  it('exits 2 saying how to get NATS when there is none and no nats-server binary', async () => {
    const saved = { NATS_URL: process.env.NATS_URL, NATS_SERVER_BIN: process.env.NATS_SERVER_BIN };
    const port = await freePort();
    process.env.NATS_URL = `nats://127.0.0.1:${port}`;
    process.env.NATS_SERVER_BIN = join(cwd, 'no-such-nats-server');
    try {
      const r = await run(['demo', '--preset', 'tiny']);
      expect(r.code).toBe(2);
      const last = r.stderr.trimEnd().split('\n').pop();
      expect(last).toContain(`no NATS at NATS_URL=nats://127.0.0.1:${port}`);
      expect(last).toContain('apt-get install nats-server');
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it.each([
    [['demo', '--tokens', '0'], "--tokens must be an integer in 1..512, given '0'"],
    [['demo', '--tokens', 'many'], "--tokens must be an integer in 1..512, given 'many'"],
    [['demo', '--preset', 'huge'], "--preset must be one of tiny, small, gpt2, given 'huge'"],
    [['demo', '--preset', 'tiny', '--model', '/m'], "--preset and --model are exclusive: give one of them, given --preset 'tiny' and --model '/m'"],
    [['demo', '--model', '/nonexistent/model'], "--model must name a model directory (manifest.json + stages/), given '/nonexistent/model'"],
    [['demo', '--fast'], 'unknown option --fast'],
  ])('exits 2 on bad usage: %j', async (argv, message) => {
    const r = await run(argv);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(message);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
  });
});
