import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Subjects } from '@tandem/protocol';
import {
  DEFAULT_PLANNER_STATE_BUCKET,
  loadEnv,
  natsAuthEnv,
  natsAuthFrom,
  natsPasswordVar,
  natsServerConfig,
  natsServiceEnv,
  plannerStatePermissions,
} from '../src';

const load = (vars: Record<string, string>): ReturnType<typeof natsAuthFrom> => natsAuthFrom(loadEnv(natsAuthEnv, vars));
const problem = (vars: Record<string, string>): string => {
  try {
    load(vars);
  } catch (err) {
    expect((err as Error).name).toBe('ConfigError');
    return (err as Error).message;
  }
  throw new Error('no ConfigError');
};

describe('NATS credentials from the environment', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'tandem-nats-env-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('is none by default, a user and password as a pair, or an NKEY seed file', () => {
    expect(load({})).toBeUndefined();
    expect(load({ NATS_USER: 'agent-1', NATS_PASSWORD: 'pw' })).toEqual({ kind: 'password', user: 'agent-1', password: 'pw' });
    const seed = natsServerConfig({ agents: [], mode: 'nkey' }).users[0].seed ?? '';
    const file = path.join(dir, 'ok.nk');
    writeFileSync(file, `# a comment\n${seed}\n`);
    const a = load({ NATS_NKEY_SEED_FILE: file });
    expect(a?.kind).toBe('nkey');
    expect(new TextDecoder().decode(a?.kind === 'nkey' ? a.seed : undefined)).toBe(seed);
  });

  it.each([
    [{ NATS_USER: 'agent-1' }, "NATS_PASSWORD is required when NATS_USER is set, given NATS_USER 'agent-1'"],
    [{ NATS_PASSWORD: 'secret-pw' }, 'NATS_USER is required when NATS_PASSWORD is set'],
    [{ NATS_USER: 'a b', NATS_PASSWORD: 'x' }, "NATS_USER must be 1..64 letters, digits, - or _, given 'a b'"],
    [{ NATS_USER: 'a', NATS_PASSWORD: 'x', NATS_NKEY_SEED_FILE: '/x' }, 'NATS_NKEY_SEED_FILE and NATS_USER/NATS_PASSWORD are exclusive'],
    [{ NATS_NKEY_SEED_FILE: '/nonexistent/seed.nk' }, "NATS_NKEY_SEED_FILE must name a readable file, given '/nonexistent/seed.nk' (ENOENT)"],
  ])('refuses %j naming the variable and the rule', (vars, message) => {
    const m = problem(vars);
    expect(m).toContain(message);
    expect(m).not.toContain('secret-pw');
  });

  it('refuses a seed file without a user seed', () => {
    const file = path.join(dir, 'bad.nk');
    writeFileSync(file, 'SAAGNWXKQ3XEVJ2GWO2H5S4S3V4Q\n');
    expect(problem({ NATS_NKEY_SEED_FILE: file })).toContain(
      `NATS_NKEY_SEED_FILE must hold an NKEY user seed (58 characters starting with SU), given '${file}'`,
    );
  });
});

describe('natsServerConfig', () => {
  it('gives each agent its own two subjects, the executor its load, the planner the telemetry to read and its state buckets', () => {
    const c = natsServerConfig({ agents: ['a-1', 'b'], executors: ['srv'] });
    const by = Object.fromEntries(c.users.map((u) => [u.id, u]));
    expect(by['a-1'].publish).toEqual([Subjects.clientProfile('a-1'), Subjects.outcome('a-1')]);
    expect(by['a-1'].subscribe).toEqual([]);
    expect(by.srv.publish).toEqual([Subjects.serverLoad('srv')]);
    // The planner publishes nothing but JetStream requests on its own two buckets' streams and their keys.
    expect(by.planner.publish).toEqual(plannerStatePermissions(DEFAULT_PLANNER_STATE_BUCKET).publish);
    expect(by.planner.publish.filter((p) => !p.includes('KV_tandem-plans') && !p.includes('$KV.tandem-plans'))).toEqual(['$JS.API.INFO']);
    expect(by.planner.publish).toContain('$KV.tandem-plans.>');
    expect(by.planner.publish).toContain('$KV.tandem-plans-leader.>');
    expect(by.planner.publish.some((p) => p.startsWith('tandem.'))).toBe(false);
    expect(by.planner.subscribe).toEqual([Subjects.allClientProfiles, Subjects.allServerLoads, Subjects.allOutcomes, '_INBOX.>']);
    // Another bucket is granted instead; 'off' grants no JetStream at all.
    const other = natsServerConfig({ agents: [], plannerStateBucket: 'plans-b' }).users.find((u) => u.id === 'planner');
    expect(other?.publish).toContain('$KV.plans-b.>');
    expect(other?.publish.join(' ')).not.toContain('tandem-plans');
    const off = natsServerConfig({ agents: [], plannerStateBucket: 'off' }).users.find((u) => u.id === 'planner');
    expect(off?.publish).toEqual([]);
    expect(off?.subscribe).toEqual([Subjects.allClientProfiles, Subjects.allServerLoads, Subjects.allOutcomes]);
    expect(c.conf).toContain('{ user: "a-1", password: "');
    expect(c.conf).toContain('subscribe: { deny: [">"] }');
    expect(natsServiceEnv(by.b)).toEqual({ NATS_USER: 'b', NATS_PASSWORD: by.b.password });
    expect(new Set(c.users.map((u) => u.password)).size).toBe(4);
  });

  it('refuses an id that is not a subject token or is used twice', () => {
    expect(() => natsServerConfig({ agents: ['a.b'] })).toThrow("agent id must match /^[A-Za-z0-9_-]{1,64}$/, given 'a.b'");
    expect(() => natsServerConfig({ agents: ['x', 'x'] })).toThrow("agent id 'x' is used twice (also as agent 'x')");
    expect(() => natsServerConfig({ agents: ['planner'] })).toThrow("agent id 'planner' is used twice (also as planner 'planner')");
    expect(() => natsServerConfig({ agents: ['a-b', 'a_b'], mode: 'password-env' })).toThrow("agent id 'a_b' is used twice (also as agent 'a-b')");
    expect(natsPasswordVar('agent-1')).toBe('NATS_PASSWORD_AGENT_1');
  });
});

describe('deploy/', () => {
  const deploy = path.join(__dirname, '../../../deploy');

  it('ships the configuration `tandem nats-config --agents agent-1,agent-2,agent-3 --executors executor-1,executor-2 --auth password-env` writes', () => {
    // Regenerate when permissions change: tandem nats-config --agents agent-1,agent-2,agent-3 --executors executor-1,executor-2 --auth password-env --out DIR
    expect(readFileSync(path.join(deploy, 'nats/nats-server.conf'), 'utf8')).toBe(
      natsServerConfig({ agents: ['agent-1', 'agent-2', 'agent-3'], executors: ['executor-1', 'executor-2'], mode: 'password-env' }).conf,
    );
  });

  it("runs nats-server with it and JetStream (the planner's state) and gives each service its user and the matching password", () => {
    const compose = readFileSync(path.join(deploy, 'docker-compose.yml'), 'utf8');
    expect(compose).toContain('command: ["-c", "/etc/nats/tandem.conf", "-js", "-sd", "/data"]');
    expect(compose).toContain('"nats-data:/data"');
    expect(compose).toContain('./nats/nats-server.conf:/etc/nats/tandem.conf:ro');
    for (const [user, v] of [
      ['executor-1', 'NATS_PASSWORD_EXECUTOR_1'],
      ['executor-2', 'NATS_PASSWORD_EXECUTOR_2'],
      ['planner', 'NATS_PASSWORD_PLANNER'],
      ['agent-1', 'NATS_PASSWORD_AGENT_1'],
      ['agent-2', 'NATS_PASSWORD_AGENT_2'],
      ['agent-3', 'NATS_PASSWORD_AGENT_3'],
    ]) {
      expect(compose).toContain(`NATS_USER: ${user}\n      NATS_PASSWORD: \${${v}:?`);
      expect(compose).toContain(`  ${v}: \${${v}:?`);
      expect(readFileSync(path.join(deploy, 'nats.env.example'), 'utf8')).toMatch(new RegExp(`^${v}=`, 'm'));
    }
  });
});
