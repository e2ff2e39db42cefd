import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { eventually } from '@tandem/testkit';
import { makeTempModel, startNatsServer, type NatsServerHandle, type TempModel } from '@tandem/testkit';
import { run } from './run-cli';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'tandem-loadtest-test-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The load-test package's small valid scenario (tools/loadtest/test); `patch` replaces top-level fields. */
const TINY = JSON.parse(readFileSync(join(__dirname, '../../loadtest/test/tiny-scenario.json'), 'utf8')) as Record<string, unknown>;
const scenario = (patch: Record<string, unknown> = {}): Record<string, unknown> => ({ ...TINY, ...patch });

describe('tandem loadtest: bad scenario files and flags', () => {
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['missing rates', { rates: undefined }, /scenario rates must be a non-empty array/],
    ['a slowdown below 1', { deviceClasses: [{ name: 'x', slowdown: 0.5 }] }, /scenario deviceClasses\[0\]\.slowdown must be a number >= 1 .*given 0\.5/],
    [
      'a private flag that is no boolean',
      { deviceClasses: [{ name: 'x', private: 'yes' }] },
      /scenario deviceClasses\[0\]\.private must be true or false, given "yes"/,
    ],
    ['a bad arrival process', { arrival: { process: 'uniform' } }, /scenario arrival\.process must be 'poisson' or 'gamma', given "uniform"/],
    ['a gamma without cv', { arrival: { process: 'gamma' } }, /scenario arrival\.cv must be a number > 0/],
    [
      'overlapping prompt ranges',
      {
        requestClasses: [
          { name: 'a', promptTokens: { min: 1, max: 10 }, outputTokens: { min: 1, max: 1 }, slaMs: 100 },
          { name: 'b', promptTokens: { min: 10, max: 20 }, outputTokens: { min: 1, max: 1 }, slaMs: 100 },
        ],
      },
      /scenario requestClasses\[1\]\.promptTokens must not overlap/,
    ],
    ['an unknown field', { rate: 3 }, /scenario rate must be one of the known fields/],
    ['an SLA override for an unknown class', { slaOverrides: { fast: { huge: 10 } } }, /scenario slaOverrides\.fast\.huge must name a request class/],
    [
      'a negative SLA',
      { requestClasses: [{ name: 'a', promptTokens: { min: 1, max: 10 }, outputTokens: { min: 1, max: 1 }, slaMs: -1 }] },
      /scenario requestClasses\[0\]\.slaMs must be a number > 0/,
    ],
    [
      'a class with no SLO',
      { requestClasses: [{ name: 'a', promptTokens: { min: 1, max: 10 }, outputTokens: { min: 1, max: 1 } }] },
      /scenario requestClasses\[0\] must state at least one SLO: ttftMs, tpotMs or slaMs/,
    ],
    [
      'a zero TPOT',
      { requestClasses: [{ name: 'a', promptTokens: { min: 1, max: 10 }, outputTokens: { min: 1, max: 1 }, tpotMs: 0 }] },
      /scenario requestClasses\[0\]\.tpotMs must be a number > 0 .*given 0/,
    ],
    [
      'a misspelt SLO',
      { requestClasses: [{ name: 'a', promptTokens: { min: 1, max: 10 }, outputTokens: { min: 1, max: 1 }, ttft: 5 }] },
      /scenario requestClasses\[0\]\.ttft must be one of the known fields/,
    ],
    [
      'an override with a bad TTFT',
      { slaOverrides: { fast: { short: { ttftMs: 'soon' } } } },
      /scenario slaOverrides\.fast\.short\.ttftMs must be a number > 0 .*given "soon"/,
    ],
    [
      'an override with an unknown key',
      { slaOverrides: { fast: { short: { p99Ms: 5 } } } },
      /scenario slaOverrides\.fast\.short\.p99Ms must be one of ttftMs, tpotMs, slaMs/,
    ],
    [
      'a zero prompt pool',
      { requestClasses: [{ name: 'a', promptTokens: { min: 1, max: 10 }, outputTokens: { min: 1, max: 1 }, slaMs: 5, promptPool: 0 }] },
      /scenario requestClasses\[0\]\.promptPool must be an integer >= 1/,
    ],
    ['an unknown emulation', { emulation: 'magic' }, /scenario emulation must be 'replay' or 'compute', given "magic"/],
    ['a zero duration (a top-level field, named without a leading dot)', { durationS: 0 }, /scenario durationS must be a number > 0 and <= 86400, given 0/],
    ['a zero SLO reference', { sloReferenceTokenMs: 0 }, /scenario sloReferenceTokenMs must be a number > 0 and <= 60000, given 0/],
    [
      'an SLO reference without replay',
      { emulation: 'compute', sloReferenceTokenMs: 4.8 },
      /scenario sloReferenceTokenMs must come with emulation 'replay' \(the recording measures the model's speed the SLOs are scaled by\), given 4\.8/,
    ],
  ];
  it.each(cases)('exits 2 naming the field for %s', async (_what, patch, message) => {
    const f = join(dir, `bad-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(f, JSON.stringify(scenario(patch)));
    const r = await run(['loadtest', '--scenario', f, '--out', join(dir, 'never')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('exits 2 for an unreadable or non-JSON file and for bad flags', async () => {
    const notJson = join(dir, 'not.json');
    writeFileSync(notJson, '{ nope');
    expect((await run(['loadtest', '--scenario', join(dir, 'missing.json')])).stderr).toMatch(
      /--scenario must be default, mobile, edge, phased, gpt2 or a readable file, given '.*missing\.json' \(ENOENT\)/,
    );
    expect((await run(['loadtest', '--scenario', notJson])).code).toBe(2);
    const p = await run(['loadtest', '--policies', 'dp,magic']);
    expect(p.code).toBe(2);
    expect(p.stderr).toMatch(/--policies must list distinct names from server-only, greedy, prefix, dp, greedy-ratio, dp-phased, given 'dp,magic'/);
    expect((await run(['loadtest', '--rates', '2,-1'])).stderr).toMatch(/--rates must be a comma-separated list/);
    expect((await run(['loadtest', '--duration-s', '0'])).code).toBe(2);
    expect((await run(['loadtest', '--scenario', 'nowhere'])).stderr).toMatch(
      /--scenario must be default, mobile, edge, phased, gpt2 or a readable file, given 'nowhere'/,
    );
    expect((await run(['loadtest', '--repeats', '0'])).stderr).toMatch(/--repeats/);
    expect((await run(['loadtest', '--emulation', 'fake'])).stderr).toMatch(/--emulation must be replay or compute, given 'fake'/);
    // edge states its SLOs for a reference speed, which only a replay recording measures.
    const compute = await run(['loadtest', '--scenario', 'edge', '--emulation', 'compute']);
    expect({ code: compute.code, stderr: compute.stderr.trim() }).toEqual({
      code: 2,
      stderr:
        'tandem loadtest: --emulation compute: the scenario states sloReferenceTokenMs 4.8 (its SLOs are scaled by the speed the replay recording measures), so it needs --emulation replay',
    });
    for (const n of ['0', '9', '1.5', 'two']) {
      const e = await run(['loadtest', '--executors', n]);
      expect({ code: e.code, stderr: e.stderr.trim() }).toEqual({ code: 2, stderr: `tandem loadtest: --executors must be an integer in 1..8, given '${n}'` });
    }
    const missing = await run(['loadtest', '--report-only', join(dir, 'no-such-run')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/--report-only must name a load test's output directory, given '.*no-such-run' \(it does not exist\)/);
    const empty = await run(['loadtest', '--report-only', dir]);
    expect(empty.code).toBe(2);
    expect(empty.stderr).toMatch(/--report-only: .*runs\.json does not exist/);
    expect((await run(['loadtest', '--report-only', dir, '--quick'])).stderr).toMatch(/--report-only takes only --json besides its directory, given --quick/);
  });
});

describe('tandem loadtest end to end (tiny model, real services)', () => {
  let nats: NatsServerHandle;
  let model: TempModel;
  beforeAll(async () => {
    nats = await startNatsServer();
    model = await makeTempModel();
  });
  afterAll(async () => {
    await nats?.stop();
    model?.remove();
  });

  /** Runs the tiny scenario as `name`.json on the model and nats-server with --json and `flags`, into `name`-out; throws on a non-zero exit. */
  async function runTiny(name: string, flags: string[], patch: Record<string, unknown> = {}): Promise<{ out: string; r: Awaited<ReturnType<typeof run>> }> {
    const f = join(dir, `${name}.json`);
    writeFileSync(f, JSON.stringify(scenario(patch)));
    const out = join(dir, `${name}-out`);
    const r = await run(['loadtest', '--scenario', f, '--model-dir', model.dir, '--nats', nats.url, '--out', out, '--json', ...flags]);
    if (r.code !== 0) throw new Error(r.stderr);
    return { out, r };
  }

  // Two repeats of three policies: about 100 s on a quiet 2-core machine, more on a busy one.
  it('runs each policy on the same trace per repeat, with replayed devices, and reports ratios with their spread', async () => {
    const began = Date.now();
    const { out, r } = await runTiny('smoke', ['--repeats', '2', '--policies', 'server-only,greedy,dp']);
    const ended = Date.now();
    const json = JSON.parse(r.stdout);
    // Each run's trace started during this test, each after the one before: its records' times can be set beside other logs.
    const starts: number[] = json.runs.map((x: { traceStartUnixMs: number }) => x.traceStartUnixMs);
    expect(starts[0]).toBeGreaterThan(began);
    expect(starts[starts.length - 1]).toBeLessThan(ended);
    starts.slice(1).forEach((t, i) => expect(t).toBeGreaterThan(starts[i]));
    expect(json).toEqual(JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')));
    const md = readFileSync(join(out, 'results.md'), 'utf8');
    expect(md).toContain('| repeat | policy |');
    expect(md).toContain('## The planner against the baselines, with spread');
    expect(md).toContain('## Device side');
    expect(readFileSync(join(out, 'goodput.svg'), 'utf8')).toMatch(/^<svg/);
    // Every request of every run, one line each, with the run it belongs to; not in results.json.
    const lines = readFileSync(join(out, 'records.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    const sentAll = json.runs.reduce((a: number, x: { stats: { requests: number } }) => a + x.stats.requests, 0);
    expect(lines).toHaveLength(sentAll);
    expect(lines[0]).toMatchObject({ repeat: 0, policy: 'server-only', status: expect.any(String), tokenMs: expect.any(Array) });
    expect(json.runs[0].records).toBeUndefined();
    // The recording: every pool prompt (3 per class), its size reported.
    expect(json.recording).toMatchObject({ prompts: 6 });
    expect(json.recording.bytes).toBeGreaterThan(1000);
    expect(r.stderr).toMatch(/recording 6 pool prompts/);
    expect(json.runs.map((x: { repeat: number; policy: string }) => `${x.repeat}:${x.policy}`)).toEqual([
      '0:server-only',
      '0:greedy',
      '0:dp',
      '1:server-only',
      '1:greedy',
      '1:dp',
    ]);
    // Same trace for every policy within a repeat, another seed per repeat.
    const sent = (k: number): number[] =>
      json.runs.filter((x: { repeat: number }) => x.repeat === k).map((x: { stats: { requests: number } }) => x.stats.requests);
    expect(new Set(sent(0)).size).toBe(1);
    expect(new Set(sent(1)).size).toBe(1);
    expect(json.runs.map((x: { seed: number }) => x.seed)).toEqual([5, 5, 5, 6, 6, 6]);
    for (const x of json.runs) {
      expect(x.stats.completed).toBeGreaterThan(0);
      expect(x.stats.completed + x.stats.failed).toBe(x.stats.requests);
      // server-only runs everything on the server; a split policy may run a whole 2-s rate on the devices (under one CPU tick).
      if (x.policy === 'server-only') expect(x.serverCpuS).toBeGreaterThan(0);
      else expect(x.serverCpuS).toBeGreaterThanOrEqual(0);
      expect(x.deviceSide.replayMisses).toBe(0);
      expect(x.serverRunQueueShare === null || x.serverRunQueueShare >= 0).toBe(true);
      expect(x.serverCoreOtherShare === null || x.serverCoreOtherShare >= 0).toBe(true);
      expect(x.deviceSide.agentsCpuS).toBeGreaterThanOrEqual(0);
      expect(Object.keys(x.stats.byDevice).sort()).toEqual(['fast', 'slow']);
    }
    // Each ratio has one value per repeat.
    expect(json.ratios.map((x: { against: string }) => x.against)).toEqual(['server-only', 'greedy']);
    for (const x of json.ratios) {
      // Against server-only every repeat has a ratio; greedy may run a repeat all on the devices
      // (0 server CPU: no ratio for that repeat, the report says so; in both repeats: null).
      if (x.against === 'server-only') expect(x.cpuPerRequest.n).toBe(2);
      if (x.cpuPerRequest === null) continue;
      expect(x.cpuPerRequest.n).toBeLessThanOrEqual(2);
      expect(x.cpuPerRequest.min).toBeLessThanOrEqual(x.cpuPerRequest.max);
      // A spread needs two repeats: with one there is no noise verdict.
      if (x.cpuPerRequest.n === 2) expect(typeof x.cpuPerRequest.withinNoise).toBe('boolean');
      else expect(x.cpuPerRequest.withinNoise).toBeNull();
    }
    // Prediction error: the agents follow plans, so requests carry the plan's predictions.
    expect(md).toContain('## Prediction error');
    for (const p of ['greedy', 'dp']) {
      const groups = Object.values(json.prediction.byPolicy[p]) as { predicted: number; figures: { e2e: { n: number } | null } }[];
      expect(groups.reduce((a, g) => a + g.predicted, 0)).toBeGreaterThan(0);
      expect(groups.some((g) => (g.figures.e2e?.n ?? 0) > 0)).toBe(true);
    }
    for (const x of json.runs) {
      expect(x.prediction).toBeDefined();
      expect(x.predictionSamples).toBeUndefined();
    }
    expect(r.stderr).toMatch(/loadtest: .*100%/);
  }, 240_000);

  it("--replay replays an earlier run's recording instead of making one, and refuses one that lacks the scenario's prompts (exit 2)", async () => {
    const first = await runTiny('recorded', ['--policies', 'server-only']);
    const file = join(first.out, 'replay.bin');
    const again = await runTiny('replayed', ['--policies', 'server-only', '--replay', file]);
    expect(again.r.stderr).not.toMatch(/recording 6 pool prompts/);
    expect(again.r.stderr).toContain(`replaying ${file} (6 prompts`);
    const [a, b] = [first, again].map((x) => JSON.parse(x.r.stdout));
    // The same devices: the costs the first run recorded, replayed without a miss.
    expect(b.recording).toMatchObject({ file, prompts: 6, reused: true, costs: a.recording.costs });
    for (const x of b.runs) expect(x.deviceSide.replayMisses).toBe(0);
    expect(readFileSync(join(again.out, 'results.md'), 'utf8')).toContain(`made by an earlier run: ${file}`);
    // Another scenario seed draws other pool prompts: the recording does not hold them.
    const other = join(dir, 'other-seed.json');
    writeFileSync(other, JSON.stringify(scenario({ seed: 6 })));
    const replaying = (recording: string): ReturnType<typeof run> =>
      run(['loadtest', '--scenario', other, '--model-dir', model.dir, '--nats', nats.url, '--out', join(dir, 'refused-out'), '--replay', recording]);
    const refused = await replaying(file);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/--replay .*replay\.bin must hold every prompt of this scenario's pools .*; 6 of 6 are missing or shorter/);
    const missing = await replaying(join(dir, 'none.bin'));
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/--replay must name a readable recording, given '.*none\.bin' \(ENOENT\)/);
  }, 180_000);

  it('with --executors 2 starts two executors and reports each one, each request attributed to the executor it ran on', async () => {
    const { out, r } = await runTiny('two', ['--policies', 'server-only', '--executors', '2']);
    const json = JSON.parse(r.stdout);
    expect(json.settings.executors).toBe(2);
    const [cell] = json.runs;
    expect(cell.executors.map((e: { id: string }) => e.id)).toEqual(['lt-executor-1', 'lt-executor-2']);
    // Each executor's figures add up to the cell's.
    const total = (k: string): number => cell.executors.reduce((a: number, e: Record<string, number>) => a + e[k], 0);
    expect(total('requests')).toBe(cell.stats.requests);
    expect(total('good')).toBe(cell.stats.metSla);
    expect(total('serverCpuS')).toBeCloseTo(cell.serverCpuS, 9);
    // Every request names the executor it ran on (its Generate summary, else its outcome): one
    // of the two, and each executor's count is its records'. Which one the planner picks for a
    // new client is its price there, so the split between them is not asserted.
    expect(cell.unattributed).toBe(0);
    expect(total('serverCpuS')).toBeGreaterThan(0);
    expect(readFileSync(join(out, 'logs', 'lt-executor-2-server-only.log'), 'utf8')).toBeDefined();
    const lines = readFileSync(join(out, 'records.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines).toHaveLength(cell.stats.requests);
    for (const l of lines) expect(['lt-executor-1', 'lt-executor-2']).toContain(l.executorId);
    for (const e of cell.executors) expect(lines.filter((l: { executorId: string }) => l.executorId === e.id)).toHaveLength(e.requests);
    // They followed plans (the agents waited for one), so each had an outcome to be joined to.
    const done = lines.filter((l: { status: string }) => l.status === 'OK');
    expect(done.length).toBeGreaterThan(0);
    expect(done.every((l: { planEpoch?: number }) => (l.planEpoch ?? 0) > 0)).toBe(true);
    const md = readFileSync(join(out, 'results.md'), 'utf8');
    expect(md).toContain('## Per executor');
    for (const e of cell.executors) expect(md).toContain(`| server-only | 3 | ${e.id} | ${e.requests} |`);
  }, 120_000);

  it("a run stopped by SIGTERM after its first cell stops every service it started, leaves that cell's records and runs.json, and --report-only makes the report from them", async () => {
    const f = join(dir, 'killed.json');
    // Three rates of 2 s each (with a second between them): it is killed once it has written its first cell, within the next ones.
    writeFileSync(f, JSON.stringify(scenario({ rates: [3, 4, 5] })));
    const out = join(dir, 'killed-out');
    const bin = join(__dirname, '../bin/tandem.js');
    const args = ['loadtest', '--scenario', f, '--model-dir', model.dir, '--nats', nats.url, '--out', out, '--policies', 'server-only'];
    // Its own process group, so that a failed test still takes its services down (finally).
    const child = spawn(process.execPath, [bin, ...args], { detached: true, stdio: 'ignore' });
    const pid = child.pid ?? 0;
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const cells = (): { rate: number; stats: { requests: number; completed: number } }[] =>
      existsSync(join(out, 'runs.json')) ? JSON.parse(readFileSync(join(out, 'runs.json'), 'utf8')).runs : [];
    try {
      await eventually(
        () => {
          if (child.exitCode !== null) throw new Error(`the load test exited with ${child.exitCode} before its first cell was written`);
          return cells().length >= 1;
        },
        { timeoutMs: 90_000, intervalMs: 100, what: 'the first cell in runs.json' },
      );
      // Its services (executor, planner, agents, each with a pid of its own), signalled to the load test alone.
      const services = descendants(pid);
      expect(services.length).toBeGreaterThanOrEqual(3);
      process.kill(pid, 'SIGTERM');
      expect(await exited).toBe(143);
      await eventually(() => services.every((p) => !alive(p)), { timeoutMs: 10_000, intervalMs: 100, what: 'every service of the stopped run gone' });
    } finally {
      if (alive(pid)) process.kill(-pid, 'SIGKILL');
    }
    const kept = cells();
    expect(kept.length).toBeLessThan(3);
    expect(existsSync(join(out, 'results.json'))).toBe(false);
    const r = await run(['loadtest', '--report-only', out, '--json']);
    if (r.code !== 0) throw new Error(r.stderr);
    const json = JSON.parse(r.stdout);
    expect(json.runs.map((x: { rate: number }) => x.rate)).toEqual(kept.map((x) => x.rate));
    expect(json.runs[0].rate).toBe(3);
    const finished = `the run finished ${kept.length} of 3 cells (policy × rate × repeat): the report covers those`;
    expect(json.warnings).toContain(finished);
    expect(r.stderr).toContain(`loadtest: warning: ${finished}`);
    // Every request of the cells it finished is in records.jsonl (a cell cut short may have left some lines: they are not in the report).
    const lines = readFileSync(join(out, 'records.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    for (const c of kept) expect(lines.filter((l: { rate: number }) => l.rate === c.rate)).toHaveLength(c.stats.requests);
    expect(json.runs[0].stats.completed).toBeGreaterThan(0);
    expect(readFileSync(join(out, 'results.md'), 'utf8')).toMatch(/\| server-only \| 3 \| \d+ \| \d+ \| 0 \|/);
    // The prediction error is made from the records again.
    expect(Object.keys(json.prediction.byPolicy['server-only'])).not.toHaveLength(0);
  }, 150_000);
});

/** The pids of `pid`'s children, theirs, and so on (from /proc). */
function descendants(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      // The field after the parenthesised name: state, then the parent's pid.
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      parent.set(Number(e), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone meanwhile
    }
  }
  const out: number[] = [];
  const walk = (p: number): void => {
    for (const [c, pp] of parent) {
      if (pp !== p) continue;
      out.push(c);
      walk(c);
    }
  };
  walk(pid);
  return out;
}

/** Whether a process with this pid exists (and is not a zombie). */
function alive(pid: number): boolean {
  try {
    return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}
