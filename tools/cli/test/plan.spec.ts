import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { evaluatePlacement, type PlacementInstance } from '@tandem/dp';
import { run } from './run-cli';


// Hand-checkable instance: the middle stage is cheap to keep on the client, the ends are
// expensive on the client, and moving the small middle boundaries is cheap, so the optimum
// switches sides twice (S C S: four transfers) under a tight SLA.
const multiSwitch: PlacementInstance = {
  stages: [
    { name: 'embed', clientMs: 50, serverMs: 1, serverWork: 1, inBytes: 10 },
    { name: 'block.0.attn', clientMs: 2, serverMs: 1, serverWork: 10, inBytes: 10 },
    { name: 'head', clientMs: 50, serverMs: 1, serverWork: 1, inBytes: 10 },
  ],
  outBytes: 10,
  uplink: { latencyMs: 1, bytesPerMs: 10 },
  downlink: { latencyMs: 1, bytesPerMs: 10 },
  slaMs: 20,
  resolutionMs: 0.5,
};

let dir: string;
let file: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'tandem-plan-test-'));
  file = join(dir, 'instance.json');
  writeFileSync(file, JSON.stringify(multiSwitch));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function writeInstance(name: string, value: unknown): string {
  const p = join(dir, name);
  writeFileSync(p, typeof value === 'string' ? value : JSON.stringify(value));
  return p;
}

describe('tandem plan', () => {
  it('answers the contract JSON with the exact optimum, switching sides twice', async () => {
    const r = await run(['plan', '--instance', file, '--json']);
    expect(r.code).toBe(0);
    const answer = JSON.parse(r.stdout);
    expect(answer).toEqual({
      algorithm: 'dp', feasible: true, placement: ['server', 'client', 'server'],
      serverWork: 2, latencyMs: evaluatePlacement(multiSwitch, ['server', 'client', 'server']).latencyMs, switches: 4,
    });
    expect(Object.keys(answer)).toEqual(['algorithm', 'feasible', 'placement', 'serverWork', 'latencyMs', 'switches']);
  });

  it.each(['dp', 'dp-grid', 'greedy', 'prefix', 'server-only', 'client-only'])('answers an array in order with --algorithm %s', async (algorithm) => {
    const loose = { ...multiSwitch, slaMs: 1000 };
    const r = await run(['plan', '--instance', writeInstance(`arr-${algorithm}.json`, [multiSwitch, loose]), '--algorithm', algorithm, '--json']);
    expect(r.code).toBe(0);
    const answers = JSON.parse(r.stdout);
    expect(answers).toHaveLength(2);
    for (const [i, inst] of [multiSwitch, loose].entries()) {
      const a = answers[i];
      expect(a.algorithm).toBe(algorithm);
      const e = evaluatePlacement(inst, a.placement);
      expect([a.latencyMs, a.serverWork, a.switches]).toEqual([e.latencyMs, e.serverWork, e.switches]);
      expect(a.feasible).toBe(e.latencyMs <= inst.slaMs);
    }
    // With a loose SLA everything fits on the client, so the optimisers do no server work.
    if (algorithm !== 'server-only') expect(answers[1].serverWork).toBe(0);
  });

  it('returns the fastest placement with feasible: false and exit 0 when no placement meets the SLA', async () => {
    const r = await run(['plan', '--instance', writeInstance('tight.json', { ...multiSwitch, slaMs: 1 }), '--json']);
    expect(r.code).toBe(0);
    const a = JSON.parse(r.stdout);
    expect(a.feasible).toBe(false);
    expect(a.placement).toEqual(['server', 'server', 'server']);
  });

  it('prints a readable table without --json', async () => {
    const r = await run(['plan', '--instance', file]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/algorithm dp: meets the SLA/);
    expect(r.stdout).toMatch(/placement\s+SCS/);
    expect(r.stdout).toMatch(/1\s+block\.0\.attn\s+client/);
  });

  it.each<[string, unknown, string]>([
    ['a negative time', { ...multiSwitch, stages: multiSwitch.stages.map((s, i) => (i === 2 ? { ...s, clientMs: -1 } : s)) }, 'tandem plan: stages[2].clientMs must be a finite number >= 0, given -1'],
    ['a missing field', { ...multiSwitch, slaMs: undefined }, 'tandem plan: slaMs must be a finite number > 0, given nothing (missing)'],
    ['a zero bandwidth', { ...multiSwitch, downlink: { latencyMs: 1, bytesPerMs: 0 } }, 'tandem plan: downlink.bytesPerMs must be a finite number > 0, given 0'],
    ['a wrong type', { ...multiSwitch, outBytes: '10' }, 'tandem plan: outBytes must be a finite number >= 0, given "10"'],
    ['a bad element of an array', [multiSwitch, { ...multiSwitch, stages: [{ ...multiSwitch.stages[0], inBytes: -5 }] }], 'tandem plan: [1].stages[0].inBytes must be a finite number >= 0, given -5'],
  ])('exits 2 on %s with one line naming the field, the rule and the value', async (name, value, line) => {
    const r = await run(['plan', '--instance', writeInstance(`bad-${name.replace(/ /g, '-')}.json`, value), '--json']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`${line}\n`);
  });

  it('exits 2 when dp-grid has no resolutionMs, naming it with its index', async () => {
    const { resolutionMs: _, ...noRes } = multiSwitch;
    const r = await run(['plan', '--instance', writeInstance('nores.json', [multiSwitch, noRes]), '--algorithm', 'dp-grid']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^tandem plan: \[1\]\.resolutionMs is required by dp-grid and must be a finite number > 0, given nothing \(missing\)\n$/);
  });

  it('exits 2 on an unknown algorithm, unreadable file or invalid JSON', async () => {
    expect((await run(['plan', '--instance', file, '--algorithm', 'magic'])).stderr).toMatch(/--algorithm must be one of dp, dp-grid, greedy, prefix, server-only, client-only, given 'magic'/);
    expect((await run(['plan', '--instance', join(dir, 'nope.json')])).code).toBe(2);
    const bad = await run(['plan', '--instance', writeInstance('broken.json', '{"stages": [')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--instance must hold JSON/);
    expect((await run(['plan'])).stderr).toMatch(/--instance is required/);
  });
});

describe('tandem plan as a process', () => {
  const bin = resolve(__dirname, '../bin/tandem.js');

  it('exits 0 with JSON on stdout, 2 with one stderr line on bad input', () => {
    const ok = spawnSync(process.execPath, [bin, 'plan', '--instance', file, '--algorithm', 'greedy', '--json'], { encoding: 'utf8' });
    expect(ok.status).toBe(0);
    expect(JSON.parse(ok.stdout).algorithm).toBe('greedy');
    const badFile = writeInstance('proc-bad.json', { ...multiSwitch, uplink: { latencyMs: -3, bytesPerMs: 1 } });
    const bad = spawnSync(process.execPath, [bin, 'plan', '--instance', badFile, '--json'], { encoding: 'utf8' });
    expect(bad.status).toBe(2);
    expect(bad.stdout).toBe('');
    expect(bad.stderr.trim().split('\n')).toEqual(['tandem plan: uplink.latencyMs must be a finite number >= 0, given -3']);
  });
});
