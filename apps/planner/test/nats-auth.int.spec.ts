import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { ClientPlan, ClientProfile, ServerLoad, Subjects } from '@tandem/protocol';
import {
  checkNatsCredentials,
  connectNats,
  createLogger,
  DEFAULT_PLANNER_STATE_BUCKET,
  natsAuthFrom,
  natsConnectAuth,
  natsServerConfig,
  natsServiceEnv,
  type NatsAuth,
  type NatsAuthValues,
  type NatsServerConfig,
  type NatsUserCredential,
} from '@tandem/service-kit';
import { capturingLogger, clientProfile, eventually, serverLoad, startNatsServer, type NatsServerHandle } from '@tandem/testkit';
import { PlanMaker, PlannerServer } from '../src';
import { makerOptions, plannerOptions } from './fixtures';

// A real nats-server started with the configuration `tandem nats-config` writes: one user per
// service, each allowed only its own subjects. The server, not the services, enforces it.
const log = createLogger({ name: 'test', level: 'silent' });
const REPO = path.resolve(__dirname, '../../..');

const profile = (clientId: string): ClientProfile => clientProfile({ clientId });
const load = (serverId: string): ServerLoad => serverLoad({ serverId });

const authOf = (u: NatsUserCredential): NatsAuth => ({ kind: 'password', user: u.user, password: u.password ?? '' });

/** A connection as `u`, with every error the server reports on it (permission violations among them). */
async function connectAs(url: string, u: NatsUserCredential): Promise<{ nc: NatsConnection; errors: Error[] }> {
  const nc = await connect({ servers: url, ...natsConnectAuth(authOf(u)) });
  const errors: Error[] = [];
  void (async () => {
    for await (const s of nc.status()) if (s.type === 'error') errors.push(s.error);
  })();
  return { nc, errors };
}

/** The permission violation the server reported for `subject`, once it has. */
function violation(errors: Error[], subject: string): Promise<Error & { operation?: string; subject?: string }> {
  return eventually(() => errors.find((e) => (e as { subject?: string }).subject === subject), {
    timeoutMs: 5000,
    what: `a permission violation on ${subject}`,
  });
}

/** nats-server on `cfg`'s configuration, written to `dir`/nats-server.conf readable by its owner only. */
function startConfigured(dir: string, cfg: NatsServerConfig, jetstream = false): Promise<NatsServerHandle> {
  const file = path.join(dir, 'nats-server.conf');
  writeFileSync(file, cfg.conf, { mode: 0o600 });
  return startNatsServer({ configFile: file, jetstream });
}

/** Closes the suite's connections, stops its planner and nats-server, and removes its folder. */
async function stopSuite(opened: readonly NatsConnection[], planner?: PlannerServer, nats?: NatsServerHandle, dir?: string): Promise<void> {
  for (const nc of opened) await nc.close().catch(() => undefined);
  await planner?.stop();
  await nats?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
}

describe('NATS with per-service credentials and permissions', () => {
  let dir: string;
  let cfg: NatsServerConfig;
  let nats: NatsServerHandle;
  let planner: PlannerServer;
  const user = (id: string): NatsUserCredential => {
    const u = cfg.users.find((x) => x.id === id);
    if (!u) throw new Error(`no user ${id}`);
    return u;
  };
  const opened: NatsConnection[] = [];
  const as = async (id: string): Promise<{ nc: NatsConnection; errors: Error[] }> => {
    const c = await connectAs(nats.url, user(id));
    opened.push(c.nc);
    return c;
  };

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'tandem-nats-auth-'));
    cfg = natsServerConfig({ agents: ['agent-a', 'agent-b'], executors: ['srv'], mode: 'password' });
    nats = await startConfigured(dir, cfg);
    const maker = new PlanMaker(makerOptions());
    planner = new PlannerServer(plannerOptions({ maker, log, natsUrl: nats.url, natsAuth: authOf(user('planner')), debounceMs: 5 }));
    await planner.start();
  });

  afterAll(() => stopSuite(opened, planner, nats, dir));

  it('refuses a connection without credentials', async () => {
    await expect(connect({ servers: nats.url, reconnect: false })).rejects.toThrow(/authorization/i);
  });

  it("lets the planner plan from the executor's load and an agent's own telemetry", async () => {
    const exec = await as('srv');
    exec.nc.publish(Subjects.serverLoad('srv'), ServerLoad.encode(load('srv')).finish());
    await eventually(() => planner.followedExecutor === 'srv', { what: 'the planner following srv' });
    const agent = await as('agent-a');
    agent.nc.publish(Subjects.clientProfile('agent-a'), ClientProfile.encode(profile('agent-a')).finish());
    const plan = await eventually(() => planner.plans().find((p) => p.clientId === 'agent-a'), { what: "agent-a's plan" });
    expect(plan.classes[0].placement).toMatch(/^[CS]{3}$/);
    await agent.nc.flush();
    expect(agent.errors).toEqual([]);
    expect(exec.errors).toEqual([]);
  });

  it("refuses an agent's publish for another client; the planner never sees it, and still gets the agent's own", async () => {
    const agent = await as('agent-a');
    const before = planner.counters.profiles;
    const other = Subjects.clientProfile('agent-b');
    agent.nc.publish(other, ClientProfile.encode(profile('agent-b')).finish());
    agent.nc.publish(Subjects.outcome('agent-b'), new Uint8Array([1]));
    const v = await violation(agent.errors, other);
    expect(v.name).toBe('PermissionViolationError');
    expect(v.operation).toBe('publish');
    expect(v.message).toMatch(/Permissions Violation for Publish to "tandem\.telemetry\.v1\.client\.agent-b"/);
    await violation(agent.errors, Subjects.outcome('agent-b'));
    // The connection stays up: the agent's own profile still arrives after the refused ones.
    expect(agent.nc.isClosed()).toBe(false);
    agent.nc.publish(Subjects.clientProfile('agent-a'), ClientProfile.encode(profile('agent-a')).finish());
    await eventually(() => planner.counters.profiles > before, { what: "agent-a's next profile" });
    expect(planner.plans().map((p) => p.clientId)).not.toContain('agent-b');
  });

  it("drops a payload naming another client on the agent's own subject (the planner's own check stays)", async () => {
    const agent = await as('agent-a');
    const dropped = planner.counters.dropped['ClientProfile.clientId:subject'] ?? 0;
    agent.nc.publish(Subjects.clientProfile('agent-a'), ClientProfile.encode(profile('agent-b')).finish());
    await eventually(() => (planner.counters.dropped['ClientProfile.clientId:subject'] ?? 0) > dropped, { what: 'the spoofed profile dropped' });
    expect(planner.plans().map((p) => p.clientId)).not.toContain('agent-b');
  });

  it("refuses the executor's publish of a client profile or another executor's load, and its subscriptions", async () => {
    const exec = await as('srv');
    exec.nc.publish(Subjects.clientProfile('agent-a'), ClientProfile.encode(profile('agent-a')).finish());
    expect((await violation(exec.errors, Subjects.clientProfile('agent-a'))).operation).toBe('publish');
    exec.nc.publish(Subjects.serverLoad('other'), ServerLoad.encode(load('other')).finish());
    await violation(exec.errors, Subjects.serverLoad('other'));
    const sub = exec.nc.subscribe(Subjects.allClientProfiles);
    await expect(
      (async () => {
        for await (const m of sub) void m;
      })(),
    ).rejects.toThrow(/Permissions Violation for Subscription/);
    expect(planner.executorIds).not.toContain('other');
  });

  it('refuses the planner any telemetry publish, and an agent any subscription', async () => {
    const p = await as('planner');
    p.nc.publish(Subjects.serverLoad('srv'), ServerLoad.encode(load('srv')).finish());
    await violation(p.errors, Subjects.serverLoad('srv'));
    const agent = await as('agent-b');
    const sub = agent.nc.subscribe(Subjects.allClientProfiles);
    await expect(
      (async () => {
        for await (const m of sub) void m;
      })(),
    ).rejects.toThrow(/Permissions Violation for Subscription/);
  });

  it('refuses a wrong password at startup with a clear error, from the check and from connectNats alike', async () => {
    const wrong: NatsAuth = { kind: 'password', user: 'agent-a', password: 'not-the-password' };
    const err = await checkNatsCredentials(nats.url, wrong).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.name).toBe('ConfigError');
    expect(err?.message).toContain(`NATS at ${nats.url} refused NATS_USER 'agent-a' with its NATS_PASSWORD`);
    expect(err?.message).not.toContain('not-the-password');
    await expect(connectNats(nats.url, 'test', log, { auth: wrong })).rejects.toThrow(/refused NATS_USER 'agent-a'/);
    // Right credentials pass the check; a server that is not there is left to the background connect.
    await expect(checkNatsCredentials(nats.url, authOf(user('agent-a')))).resolves.toBeUndefined();
    await expect(checkNatsCredentials('nats://127.0.0.1:1', wrong, { timeoutMs: 500 })).resolves.toBeUndefined();
  });

  it('stops a service started with a wrong password with exit code 2 naming NATS_USER', async () => {
    // The executor checks its credentials before it loads the model, so no model is needed.
    const env = {
      ...process.env,
      MODEL_DIR: path.join(dir, 'no-model'),
      NATS_URL: nats.url,
      ...natsServiceEnv(user('srv')),
      NATS_PASSWORD: 'wrong',
      LOG_LEVEL: 'silent',
    };
    const child = spawn(process.execPath, ['--require', 'tsx/cjs', 'apps/server-executor/src/main.ts'], { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => {
      stderr += b.toString('utf8');
    });
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(stderr.trim()).toMatch(
      new RegExp(`^server-executor: invalid configuration:\\n {2}NATS at ${nats.url.replace(/\./g, '\\.')} refused NATS_USER 'srv' with its NATS_PASSWORD: `),
    );
    expect(code).toBe(2);
  }, 60_000);
});

describe('the other credential kinds the generator writes', () => {
  let dir: string;
  const servers: NatsServerHandle[] = [];
  const opened: NatsConnection[] = [];

  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'tandem-nats-auth-'));
  });
  afterAll(async () => {
    for (const nc of opened) await nc.close().catch(() => undefined);
    for (const s of servers) await s.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('nkey: the agent connects with the seed file named by NATS_NKEY_SEED_FILE, publishes its own profile, and is refused for another', async () => {
    const cfg = natsServerConfig({ agents: ['agent-a'], mode: 'nkey' });
    expect(cfg.conf).not.toMatch(/SU[A-Z2-7]{56}/); // the server holds public keys only
    const file = path.join(dir, 'nkey.conf');
    writeFileSync(file, cfg.conf);
    const nats = await startNatsServer({ configFile: file });
    servers.push(nats);
    const u = cfg.users.find((x) => x.id === 'agent-a');
    const seedFile = path.join(dir, 'agent-a.nk');
    writeFileSync(seedFile, `${u?.seed ?? ''}\n`, { mode: 0o600 });
    const auth = natsAuthFrom({ NATS_USER: '', NATS_PASSWORD: '', ...(u ? natsServiceEnv(u, seedFile) : {}) } as NatsAuthValues);
    expect(auth?.kind).toBe('nkey');
    const nc = await connectNats(nats.url, 'agent-a', log, { auth });
    opened.push(nc);
    const errors: Error[] = [];
    void (async () => {
      for await (const s of nc.status()) if (s.type === 'error') errors.push(s.error);
    })();
    const watcher = await connect({
      servers: nats.url,
      ...natsConnectAuth({ kind: 'nkey', seedFile: '', seed: new TextEncoder().encode(cfg.users.find((x) => x.id === 'planner')?.seed ?? '') }),
    });
    opened.push(watcher);
    const sub = watcher.subscribe(Subjects.allClientProfiles, { max: 1 });
    await watcher.flush();
    nc.publish(Subjects.clientProfile('agent-b'), ClientProfile.encode(profile('agent-b')).finish());
    nc.publish(Subjects.clientProfile('agent-a'), ClientProfile.encode(profile('agent-a')).finish());
    for await (const m of sub) expect(m.subject).toBe(Subjects.clientProfile('agent-a'));
    await violation(errors, Subjects.clientProfile('agent-b'));
    // Another key (one the server does not list) is refused at startup.
    const stranger = natsServerConfig({ agents: ['agent-a'], mode: 'nkey' }).users[2];
    const strangerFile = path.join(dir, 'stranger.nk');
    writeFileSync(strangerFile, stranger.seed ?? '');
    await expect(checkNatsCredentials(nats.url, natsAuthFrom({ NATS_USER: '', NATS_PASSWORD: '', NATS_NKEY_SEED_FILE: strangerFile }))).rejects.toThrow(
      `refused the NKEY seed in NATS_NKEY_SEED_FILE '${strangerFile}'`,
    );
  });

  it('password-env: the configuration deploy/ ships reads each password from the environment of nats-server', async () => {
    // deploy/'s users (libs/service-kit's deploy test keeps the file equal to this).
    const cfg = natsServerConfig({ agents: ['agent-1', 'agent-2', 'agent-3'], executors: ['executor-1', 'executor-2'], mode: 'password-env' });
    const file = path.join(REPO, 'deploy/nats/nats-server.conf');
    const vars = Object.fromEntries(cfg.users.map((u) => [u.passwordVar ?? '', `pw-${u.id}`]));
    await expect(startNatsServer({ configFile: file, timeoutMs: 3000 })).rejects.toThrow(/NATS_PASSWORD_PLANNER/);
    const nats = await startNatsServer({ configFile: file, env: vars });
    servers.push(nats);
    await expect(checkNatsCredentials(nats.url, { kind: 'password', user: 'agent-1', password: 'pw-agent-1' })).resolves.toBeUndefined();
    await expect(checkNatsCredentials(nats.url, { kind: 'password', user: 'agent-1', password: 'pw-planner' })).rejects.toThrow(/refused NATS_USER 'agent-1'/);
    await expect(checkNatsCredentials(nats.url, { kind: 'password', user: 'executor-2', password: 'pw-executor-2' })).resolves.toBeUndefined();
  });
});

describe("the planner's state bucket under the generated permissions (JetStream on)", () => {
  let dir: string;
  let nats: NatsServerHandle;
  let planner: PlannerServer;
  const opened: NatsConnection[] = [];
  const captured = capturingLogger('info');

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'tandem-nats-js-auth-'));
    const cfg = natsServerConfig({ agents: ['agent-a'], executors: ['srv'], mode: 'password' });
    nats = await startConfigured(dir, cfg, true);
    const user = (id: string): NatsUserCredential => cfg.users.find((x) => x.id === id)!;
    planner = new PlannerServer(
      plannerOptions({
        natsUrl: nats.url,
        natsAuth: authOf(user('planner')),
        debounceMs: 5,
        log: captured.log,
        state: { bucket: DEFAULT_PLANNER_STATE_BUCKET, leaseMs: 1000 },
      }),
    );
    await planner.start();
    for (const id of ['srv', 'agent-a', 'planner']) opened.push((await connectAs(nats.url, user(id))).nc);
  });

  afterAll(() => stopSuite(opened, planner, nats, dir));

  it('lets the planner lead, write its plans and watch them, without a permission violation', async () => {
    const [exec, agent, asPlanner] = opened;
    await eventually(() => planner.role === 'leader', { what: 'the planner leading' });
    exec.publish(Subjects.serverLoad('srv'), ServerLoad.encode(load('srv')).finish());
    await eventually(() => planner.followedExecutor === 'srv', { what: 'the planner following srv' });
    agent.publish(Subjects.clientProfile('agent-a'), ClientProfile.encode(profile('agent-a')).finish());
    const plan = await eventually(() => planner.plans().find((p) => p.clientId === 'agent-a'), { what: "agent-a's plan" });
    const kv = await new Kvm(asPlanner).open(DEFAULT_PLANNER_STATE_BUCKET);
    await eventually(async () => (await kv.get('plans.agent-a'))?.revision, { what: 'the plan written' });
    expect(ClientPlan.decode((await kv.get('plans.agent-a'))!.value).epoch).toBe(plan.epoch);
    expect(planner.stateCounters?.writeFailures).toBe(0);
    expect(captured.lines().filter((l) => l.level >= 40 && /NATS|bucket|lease/.test(l.msg))).toEqual([]);
  });

  it("refuses the planner's credential any other stream, and the agents and executors the planner's bucket", async () => {
    const [exec, agent, asPlanner] = opened;
    await expect(new Kvm(asPlanner).create('not-the-planners')).rejects.toThrow(/Permissions Violation|timeout|TIMEOUT/i);
    for (const nc of [exec, agent]) {
      const kv = await new Kvm(nc).open(DEFAULT_PLANNER_STATE_BUCKET);
      await expect(kv.get('plans.agent-a')).rejects.toThrow(/Permissions Violation|timeout|TIMEOUT/i);
      await expect(kv.put('plans.agent-a', new Uint8Array([1]))).rejects.toThrow(/Permissions Violation|timeout|TIMEOUT/i);
    }
  });
});

describe('a planner whose NATS user may not use its state bucket', () => {
  it('stops at start with a ConfigError naming PLANNER_STATE_BUCKET and the fix', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tandem-nats-js-denied-'));
    // The configuration written before the planner kept state: telemetry only.
    const cfg = natsServerConfig({ agents: [], mode: 'password', plannerStateBucket: 'off' });
    const nats = await startConfigured(dir, cfg, true);
    const planner = new PlannerServer(
      plannerOptions({
        natsUrl: nats.url,
        natsAuth: authOf(cfg.users.find((u) => u.id === 'planner')!),
        state: { bucket: 'tandem-plans', leaseMs: 1000 },
      }),
    );
    try {
      await expect(planner.start()).rejects.toThrow(
        /PLANNER_STATE_BUCKET='tandem-plans': the planner's NATS user may not use JetStream on this bucket .*PLANNER_STATE_BUCKET=off/,
      );
    } finally {
      await stopSuite([], planner, nats, dir);
    }
  });
});
