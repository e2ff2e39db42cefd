import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cpus } from 'node:os';
import { cpuBusySeconds, cpuSeconds, ensurePresetModel, launchService, presetModelDir, runQueueWaitSeconds, serviceEnv } from '../src';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'tandem-launcher-test-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('serviceEnv', () => {
  const shell = { PATH: '/bin', HOME: '/home/x', PLANNER_IDLE_UTILISATION: '0', EXECUTOR_THREADS: '3', AGENT_SLOWDOWN: '9', LOG_LEVEL: 'debug' };

  it('drops every service variable of the caller, keeps the rest, and sets what it is given', () => {
    expect(serviceEnv('planner', { MODEL_DIR: '/m' }, { shell })).toEqual({ PATH: '/bin', HOME: '/home/x', MODEL_DIR: '/m' });
  });

  it("with fromShell lets the app's own variables of the caller through, and what it is given wins", () => {
    expect(serviceEnv('planner', { MODEL_DIR: '/m', LOG_LEVEL: 'warn' }, { shell, fromShell: true })).toEqual({
      PATH: '/bin',
      HOME: '/home/x',
      PLANNER_IDLE_UTILISATION: '0',
      MODEL_DIR: '/m',
      LOG_LEVEL: 'warn',
    });
    expect(serviceEnv('server-executor', { MODEL_DIR: '/m' }, { shell, fromShell: true })).toMatchObject({ EXECUTOR_THREADS: '3' });
    expect(serviceEnv('server-executor', { MODEL_DIR: '/m' }, { shell, fromShell: true }).PLANNER_IDLE_UTILISATION).toBeUndefined();
  });

  it("checks the result against the app's schema, naming the app, the variable, the rule and the value", () => {
    expect(() => serviceEnv('planner', { MODEL_DIR: '/m' }, { shell: { PLANNER_IDLE_UTILISATION: '2' }, fromShell: true })).toThrow(
      "the planner's environment: PLANNER_IDLE_UTILISATION must be a number in 0..1, given '2'",
    );
    expect(() => serviceEnv('planner', {}, { shell: {} })).toThrow(/the planner's environment: MODEL_DIR is required/);
    expect(() => serviceEnv('planner', { MODEL_DIR: '/m', AGENT_SLOWDOWN: '2' }, { shell: {} })).toThrow(
      'internal: AGENT_SLOWDOWN is not a variable of the planner',
    );
  });
});

describe('launchService', () => {
  it('names the service, why it stopped, its log and its last lines when it exits before listening', async () => {
    const logFile = join(dir, 'executor.log');
    const err = await launchService({
      name: 'bad-executor',
      app: 'server-executor',
      env: { MODEL_DIR: join(dir, 'no-model'), NATS_URL: 'off' },
      logFile,
    }).catch((e: Error) => e);
    expect((err as Error).message).toMatch(
      new RegExp(`^bad-executor exited with code \\d+ before listening; log ${logFile}:\\n.*manifest\\.json must exist`, 's'),
    );
    expect(readFileSync(logFile, 'utf8')).toContain('manifest.json must exist');
  }, 30_000);
});

describe('model cache', () => {
  it('lives under $TANDEM_CACHE_DIR, else $XDG_CACHE_HOME/tandem, else ~/.cache/tandem', () => {
    expect(presetModelDir('small', { TANDEM_CACHE_DIR: '/c' })).toBe('/c/models/small-seed1');
    expect(presetModelDir('tiny', { XDG_CACHE_HOME: '/x' })).toBe('/x/tandem/models/tiny-seed1');
    expect(presetModelDir('tiny', { HOME: '/h' })).toMatch(/\.cache\/tandem\/models\/tiny-seed1$/);
  });

  it('creates a preset once, in place of an interrupted write, and refuses another preset or foreign files', async () => {
    const m = join(dir, 'cache', 'models', 'tiny-seed1');
    mkdirSync(join(m, 'stages'), { recursive: true });
    const first = await ensurePresetModel('tiny', m);
    expect(first.created).toBe(true);
    expect(first.manifest.source).toEqual({ kind: 'synthetic', preset: 'tiny', seed: 1 });
    expect(readdirSync(join(dir, 'cache', 'models'))).toEqual(['tiny-seed1']);
    expect((await ensurePresetModel('tiny', m)).created).toBe(false);
    await expect(ensurePresetModel('small', m)).rejects.toThrow(
      `${m} holds another model ({"kind":"synthetic","preset":"tiny","seed":1}), not the small preset`,
    );
    const other = join(dir, 'other');
    mkdirSync(other);
    writeFileSync(join(other, 'notes.txt'), 'mine');
    await expect(ensurePresetModel('tiny', other)).rejects.toThrow(`${other} holds files that are not a model (notes.txt)`);
  }, 30_000);
});

describe('/proc', () => {
  it('reads how long a process waited for a CPU from schedstat, growing as it runs', () => {
    const a = runQueueWaitSeconds(process.pid);
    expect(Number.isFinite(a) && a >= 0).toBe(true);
    expect(runQueueWaitSeconds(process.pid)).toBeGreaterThanOrEqual(a);
    expect(runQueueWaitSeconds(2 ** 22 + 12345)).toBeNaN();
  });

  it("reads each CPU's busy time from /proc/stat: the CPUs together grow by at least what this process spent", () => {
    const total = (): number => cpus().reduce((a, _, i) => a + cpuBusySeconds(i), 0);
    const busy0 = total();
    const own0 = cpuSeconds(process.pid);
    // Spin until this process has spent 0.2 s of CPU (on a busy machine that takes longer than
    // 0.2 s of wall time), at most 10 s.
    const until = performance.now() + 10_000;
    while (cpuSeconds(process.pid) - own0 < 0.2 && performance.now() < until) for (let i = 0; i < 1e5; i++);
    const own = cpuSeconds(process.pid) - own0;
    expect(own).toBeGreaterThanOrEqual(0.2);
    // Clock ticks are 10 ms: allow one per CPU of rounding.
    expect(total() - busy0).toBeGreaterThanOrEqual(own - 0.01 * (cpus().length + 1));
    expect(cpuBusySeconds(4096)).toBeNaN();
  });
});
