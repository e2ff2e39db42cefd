import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from './run-cli';

describe('tandem nats-config', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-nats-config-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('writes the configuration and one private env file per service', async () => {
    const out = join(dir, 'pw');
    const r = await run(['nats-config', '--agents', 'a,b', '--out', out, '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout) as { files: string[]; users: { id: string; publish: string[] }[] };
    expect(doc.files.map((f) => f.slice(out.length + 1))).toEqual(['nats-server.conf', 'planner.env', 'executor.env', 'a.env', 'b.env']);
    expect(doc.users.find((u) => u.id === 'a')?.publish).toEqual(['tandem.telemetry.v1.client.a', 'tandem.telemetry.v1.outcome.a']);
    expect(r.stdout).not.toMatch(/password"?:/);
    const env = readFileSync(join(out, 'a.env'), 'utf8');
    const pw = /^NATS_PASSWORD=(.+)$/m.exec(env)?.[1] ?? '';
    expect(env).toMatch(/^NATS_USER=a$/m);
    expect(readFileSync(join(out, 'nats-server.conf'), 'utf8')).toContain(`{ user: "a", password: "${pw}"`);
    expect(statSync(join(out, 'a.env')).mode & 0o777).toBe(0o600);
    expect(statSync(join(out, 'nats-server.conf')).mode & 0o777).toBe(0o600);
    // An existing configuration is not replaced (its services hold credentials for it).
    const again = await run(['nats-config', '--agents', 'a', '--out', out]);
    expect(again.code).toBe(2);
    expect(again.stderr).toContain('--out must be a directory without a nats-server.conf');
  });

  it('writes no credential file in password-env mode, and seed files in nkey mode', async () => {
    const envOut = join(dir, 'env');
    const r = await run(['nats-config', '--agents', 'agent-1', '--executors', 'srv', '--auth', 'password-env', '--out', envOut]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('NATS_PASSWORD_AGENT_1 (user agent-1)');
    expect(existsSync(join(envOut, 'agent-1.env'))).toBe(false);
    const nk = join(dir, 'nk');
    expect((await run(['nats-config', '--agents', 'a', '--auth', 'nkey', '--out', nk])).code).toBe(0);
    expect(readFileSync(join(nk, 'a.env'), 'utf8')).toContain(`NATS_NKEY_SEED_FILE=${join(nk, 'a.nk')}`);
    expect(readFileSync(join(nk, 'a.nk'), 'utf8')).toMatch(/^SU[A-Z2-7]{56}\n$/);
  });

  it.each([
    [['--out', 'x'], '--agents is required'],
    [['--agents', 'a.b', '--out', 'x'], "--agents must be a comma-separated list of ids matching /^[A-Za-z0-9_-]{1,64}$/, given 'a.b'"],
    [['--agents', 'a,a', '--out', 'x'], "agent id 'a' is used twice"],
    [['--agents', 'a', '--auth', 'jwt', '--out', 'x'], "--auth must be one of password, password-env, nkey, given 'jwt'"],
  ])('exits 2 on %j naming the flag', async (args, message) => {
    const r = await run(['nats-config', ...args]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(message);
  });
});
