import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { evaluateGeneration, evaluatePlacement, solve, solveGeneration, type GenerationInstance, type PlacementInstance } from '@tandem/dp';
import { docJsonBlock } from '@tandem/testkit';
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
      algorithm: 'dp',
      feasible: true,
      placement: ['server', 'client', 'server'],
      serverWork: 2,
      latencyMs: evaluatePlacement(multiSwitch, ['server', 'client', 'server']).latencyMs,
      switches: 4,
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
    [
      'a negative time',
      { ...multiSwitch, stages: multiSwitch.stages.map((s, i) => (i === 2 ? { ...s, clientMs: -1 } : s)) },
      'tandem plan: stages[2].clientMs must be a finite number >= 0, given -1',
    ],
    ['a missing field', { ...multiSwitch, slaMs: undefined }, 'tandem plan: slaMs must be a finite number > 0, given nothing (missing)'],
    [
      'a zero bandwidth',
      { ...multiSwitch, downlink: { latencyMs: 1, bytesPerMs: 0 } },
      'tandem plan: downlink.bytesPerMs must be a finite number > 0, given 0',
    ],
    ['a wrong type', { ...multiSwitch, outBytes: '10' }, 'tandem plan: outBytes must be a finite number >= 0, given "10"'],
    [
      'a bad element of an array',
      [multiSwitch, { ...multiSwitch, stages: [{ ...multiSwitch.stages[0], inBytes: -5 }] }],
      'tandem plan: [1].stages[0].inBytes must be a finite number >= 0, given -5',
    ],
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
    expect((await run(['plan', '--instance', file, '--algorithm', 'magic'])).stderr).toMatch(
      /--algorithm must be one of dp, dp-grid, greedy, prefix, server-only, client-only, greedy-ratio, dp-phased, given 'magic'/,
    );
    expect((await run(['plan', '--instance', join(dir, 'nope.json')])).code).toBe(2);
    const bad = await run(['plan', '--instance', writeInstance('broken.json', '{"stages": [')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--instance must hold JSON/);
    expect((await run(['plan'])).stderr).toMatch(/--instance is required/);
  });
});

/** The JSON code block following `<!-- marker -->` in docs/placement.md. */
const docBlock = (marker: string): unknown => docJsonBlock('docs/placement.md', marker);

// A generation instance: the worked example of docs/placement.md under TTFT 40 ms and TPOT 20 ms,
// which every split misses (each decode pass crosses the 10 ms links twice or more).
const generation: GenerationInstance & { generation: true } = {
  ...(docBlock('worked-example:instance') as GenerationInstance & { generation: true }),
  slo: { ttftMs: 40, tpotMs: 20 },
};

describe('tandem plan on generation instances', () => {
  it('answers TTFT, TPOT, E2E and the met flag of each stated SLO', async () => {
    const r = await run(['plan', '--instance', writeInstance('gen.json', generation), '--json']);
    expect(r.code).toBe(0);
    const a = JSON.parse(r.stdout);
    expect(Object.keys(a)).toEqual([
      'algorithm',
      'feasible',
      'placement',
      'serverWork',
      'latencyMs',
      'switches',
      'ttftMs',
      'tpotMs',
      'e2eMs',
      'met',
      'serverDecoding',
    ]);
    const e = evaluateGeneration(generation, a.placement);
    expect([a.ttftMs, a.tpotMs, a.e2eMs, a.latencyMs, a.serverWork, a.switches]).toEqual([e.ttftMs, e.tpotMs, e.e2eMs, e.e2eMs, e.serverWork, e.switches]);
    expect(a.met).toEqual({ ttftMs: e.ttftMs <= 40, tpotMs: e.tpotMs <= 20 });
    expect(a.feasible).toBe(true);
    // Each decode pass of a split crosses the 10 ms links twice or more: only the streamed all-server plan meets TPOT 20 ms.
    expect(a.placement).toEqual(['server', 'server', 'server']);
    expect(a.serverDecoding).toBe(true);
  });

  it('detects a generation by the marker or by a slo without slaMs, in an array mixed with contract instances', async () => {
    const { generation: _, ...unmarked } = generation;
    const r = await run([
      'plan',
      '--instance',
      writeInstance('mixed.json', [multiSwitch, generation, { ...unmarked, serverDecoding: false }]),
      '--algorithm',
      'greedy',
      '--json',
    ]);
    expect(r.code).toBe(0);
    const [c, g, u] = JSON.parse(r.stdout);
    expect(c).toEqual(solve(multiSwitch, 'greedy'));
    expect(Object.keys(c)).toEqual(['algorithm', 'feasible', 'placement', 'serverWork', 'latencyMs', 'switches']);
    expect(g).toEqual(solveGeneration(generation, 'greedy'));
    expect(u).toEqual(solveGeneration({ ...unmarked, serverDecoding: false }, 'greedy'));
    expect(u.serverDecoding).toBe(false);
  });

  it('prints the SLOs met and missed without --json', async () => {
    const r = await run(['plan', '--instance', writeInstance('gen-human.json', { ...generation, slo: { ttftMs: 60, tpotMs: 0.5 } })]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/MISSES an SLO/);
    expect(r.stdout).toMatch(/TPOT\s+[\d.]+ ms \(SLO 0.5 ms: MISSED\)/);
    expect(r.stdout).toMatch(/E2E\s+[\d.]+ ms \(no SLO\)/);
  });

  it('answers the worked example of docs/placement.md as the document says', async () => {
    const base = docBlock('worked-example:instance') as GenerationInstance;
    const variants = [base, { ...base, slo: { ttftMs: 40, tpotMs: 20 } }, { ...base, slo: { ttftMs: 40, tpotMs: 20 }, serverDecoding: false }];
    const r = await run(['plan', '--instance', writeInstance('worked.json', variants), '--json']);
    expect(r.code).toBe(0);
    const got = (
      JSON.parse(r.stdout) as {
        placement: string[];
        feasible: boolean;
        serverWork: number;
        ttftMs: number;
        tpotMs: number;
        e2eMs: number;
        serverDecoding: boolean;
      }[]
    ).map((a) => ({
      placement: a.placement.map((p) => (p === 'client' ? 'C' : 'S')).join(''),
      feasible: a.feasible,
      serverWork: a.serverWork,
      ttftMs: a.ttftMs,
      tpotMs: a.tpotMs,
      e2eMs: a.e2eMs,
      serverDecoding: a.serverDecoding,
    }));
    expect(got).toEqual(docBlock('worked-example:answers'));
  });

  it.each<[string, unknown, string]>([
    [
      'a negative decode time',
      { ...generation, stages: generation.stages.map((s, i) => (i === 1 ? { ...s, clientDecodeMs: -1 } : s)) },
      'tandem plan: stages[1].clientDecodeMs must be a finite number >= 0, given -1',
    ],
    ['an empty slo', { ...generation, slo: {} }, 'tandem plan: slo must state at least one of e2eMs, ttftMs, tpotMs, given {}'],
    [
      'a fractional decodeSteps in an array',
      [multiSwitch, { ...generation, decodeSteps: 2.5 }],
      'tandem plan: [1].decodeSteps must be an integer >= 0, given 2.5',
    ],
    ['a bad SLO value', [{ ...generation, slo: { ttftMs: -5 } }], 'tandem plan: [0].slo.ttftMs must be a finite number > 0, given -5'],
  ])('exits 2 on %s naming the field with its index', async (name, value, line) => {
    const r = await run(['plan', '--instance', writeInstance(`gen-bad-${name.replace(/ /g, '-')}.json`, value), '--json']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`${line}\n`);
  });

  it('accepts dp-grid on an E2E-only generation and refuses it, naming slo, when TTFT or TPOT is stated', async () => {
    const e2e = { ...generation, slo: { e2eMs: 400 }, resolutionMs: 0.5 };
    const ok = await run(['plan', '--instance', writeInstance('gen-grid.json', e2e), '--algorithm', 'dp-grid', '--json']);
    expect(ok.code).toBe(0);
    const a = JSON.parse(ok.stdout);
    expect(a.algorithm).toBe('dp-grid');
    expect(a.feasible).toBe(true);
    expect(a.serverWork).toBeGreaterThanOrEqual(solveGeneration(e2e, 'dp').serverWork * (1 - 1e-9));
    const bad = await run(['plan', '--instance', writeInstance('gen-grid-bad.json', [e2e, { ...generation, resolutionMs: 0.5 }]), '--algorithm', 'dp-grid']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(
      /^tandem plan: \[1\]\.slo must state e2eMs alone for dp-grid, which bounds one latency \(use dp for TTFT\/TPOT SLOs\), given \{"ttftMs":40,"tpotMs":20\}\n$/,
    );
  });
});

describe('tandem plan on phased instances', () => {
  type Phased = GenerationInstance & { phased: true };
  const letters = (p: string[]): string => p.map((l) => (l === 'client' ? 'C' : 'S')).join('');

  it('answers the worked example of docs/placement.md as the document says', async () => {
    const base = docBlock('phased-example:instance') as Phased;
    const bigCache = { ...base, stages: base.stages.map((s) => (s.name === 'block' ? { ...s, kvBytesPerToken: 40_000 } : s)) };
    const handover = (msPerKibOut: number): Phased & { kvHandover: { msPerKibOut: number } } => ({ ...base, kvHandover: { msPerKibOut } });
    const phased = await run(['plan', '--instance', writeInstance('phased.json', [base, bigCache, handover(0.3), handover(0.4)]), '--json']);
    const dp = await run(['plan', '--instance', writeInstance('phased-dp.json', base), '--algorithm', 'dp', '--json']);
    expect([phased.code, dp.code]).toEqual([0, 0]);
    const answers = [...(JSON.parse(phased.stdout) as PhasedAnswer[]), JSON.parse(dp.stdout) as PhasedAnswer];
    const want = docBlock('phased-example:answers') as Record<string, number | string | boolean>[];
    expect(answers.map((a) => [letters(a.prefillPlacement), letters(a.decodePlacement), a.feasible])).toEqual(
      want.map((w) => [w.prefill, w.decode, w.feasible]),
    );
    answers.forEach((a, i) => {
      for (const k of ['serverWork', 'ttftMs', 'tpotMs', 'e2eMs', 'handoverMs', 'handoverWork'] as const) {
        const w = want[i][k] ?? 0;
        expect(Math.abs((a[k] ?? 0) - (w as number))).toBeLessThanOrEqual(1e-9 * Math.max(1, Math.abs(a[k] ?? 0)));
      }
    });
    expect(answers[0]).toMatchObject({ algorithm: 'dp-phased', kvDownBytes: 204_800, kvUpBytes: 0, placement: answers[0].decodePlacement });
    expect(answers[4].algorithm).toBe('dp');
  });

  it("keeps a private device's ends on the client: dp-phased still meets the SLOs, dp cannot", async () => {
    const priv = { ...(docBlock('phased-example:instance') as Phased), private: true };
    const phased = await run(['plan', '--instance', writeInstance('private.json', priv), '--json']);
    const dp = await run(['plan', '--instance', writeInstance('private-dp.json', priv), '--algorithm', 'dp', '--json']);
    expect([phased.code, dp.code]).toEqual([0, 0]);
    const a = JSON.parse(phased.stdout) as PhasedAnswer;
    expect([letters(a.prefillPlacement), letters(a.decodePlacement), a.feasible, a.serverWork]).toEqual(['CSC', 'CCC', true, 20]);
    const b = JSON.parse(dp.stdout) as PhasedAnswer;
    expect(b.feasible).toBe(false);
    expect([b.prefillPlacement[0], b.prefillPlacement[2]]).toEqual(['client', 'client']);
  });

  it('prints both placements and the hand-over without --json', async () => {
    const r = await run(['plan', '--instance', writeInstance('phased-text.json', docBlock('phased-example:instance'))]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/algorithm dp-phased: meets every SLO/);
    expect(r.stdout).toMatch(/prefill\s+CSC\n/);
    expect(r.stdout).toMatch(/decode\s+CCC \(0 transfers per pass\)/);
    expect(r.stdout).toMatch(/hand-over\s+60\.96 ms \(KV cache up 0 B, down 204800 B; server work 0\)/);
  });

  it('exits 2 naming phased or kvBytesPerToken with its index', async () => {
    const base = docBlock('phased-example:instance') as Phased;
    const notPhased = await run(['plan', '--instance', writeInstance('np.json', [multiSwitch]), '--algorithm', 'dp-phased']);
    expect(notPhased.code).toBe(2);
    expect(notPhased.stderr).toBe(
      'tandem plan: [0].phased must be true for --algorithm dp-phased (a generation instance with "phased": true), given a contract instance\n',
    );
    const marker = await run(['plan', '--instance', writeInstance('pm.json', [base, { ...base, phased: 'yes' }])]);
    expect(marker.stderr).toBe('tandem plan: [1].phased must be a boolean (true asks for a placement per phase), given "yes"\n');
    const kv = await run([
      'plan',
      '--instance',
      writeInstance('pk.json', { ...base, stages: [base.stages[0], { ...base.stages[1], kvBytesPerToken: 'big' }] }),
    ]);
    expect(kv.code).toBe(2);
    expect(kv.stderr).toBe('tandem plan: stages[1].kvBytesPerToken must be a finite number >= 0, given "big"\n');
  });
});

interface PhasedAnswer {
  algorithm: string;
  handoverWork: number;
  feasible: boolean;
  placement: string[];
  prefillPlacement: string[];
  decodePlacement: string[];
  serverWork: number;
  ttftMs: number;
  tpotMs: number;
  e2eMs: number;
  handoverMs: number;
  kvUpBytes: number;
  kvDownBytes: number;
}

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
