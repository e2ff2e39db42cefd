import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { niceTicks, renderChart } from '../src/plot/svg';
import { QUICK_RANGES, placementShape, runSweep, summarize } from '../src/simulate/sweep';
import { run } from './run-cli';


let dir: string;
beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'tandem-simulate-test-')); });
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('tandem simulate', () => {
  it('--quick --json writes the results, the report and the plots, and prints the JSON', async () => {
    const out = join(dir, 'quick');
    const r = await run(['simulate', '--quick', '--json', '--out', out, '--models', 'gpt2-small,vit-b16']);
    expect(r.code).toBe(0);
    const json = JSON.parse(r.stdout);
    expect(json).toEqual(JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')));
    expect(json.models.map((m: { model: string }) => m.model)).toEqual(['gpt2-small', 'vit-b16']);
    const o = json.overall;
    expect(o.configs).toBe(16 + 8);
    expect(o.infeasible).toBe(0);
    // dp is the optimum: it saves at least as much as every baseline, and something overall.
    expect(o.reductionVsServerOnly.dp).toBeGreaterThan(0);
    expect(o.reductionVsServerOnly.dp).toBeGreaterThanOrEqual(o.reductionVsServerOnly.prefix);
    expect(o.reductionVsServerOnly.dp).toBeGreaterThanOrEqual(o.reductionVsServerOnly.greedy);
    for (const g of o.reductionVsServerOnly.grid) expect(o.reductionVsServerOnly.dp).toBeGreaterThanOrEqual(g);
    expect(o.gridCost.every((c: number) => c >= 0)).toBe(true);
    expect(json.paper.overall.dpOverGreedy).toBe(0.19);
    const md = readFileSync(join(out, 'results.md'), 'utf8');
    expect(md).toMatch(/\| \*\*overall\*\* \| 24 \|/);
    expect(md).toMatch(/≈ 33 %/);
    for (const f of ['reduction-by-model.svg', 'reduction-by-sla.svg', 'reduction-by-client.svg', 'configs.csv']) expect(existsSync(join(out, f))).toBe(true);
    const svg = readFileSync(join(out, 'reduction-by-model.svg'), 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('paper (dp)');
    expect(readFileSync(join(out, 'configs.csv'), 'utf8').trim().split('\n')).toHaveLength(25);
    expect(r.stderr).toMatch(/simulate: 24 configurations/);
    expect(r.stderr).toMatch(/simulate: 100%/);
  });

  it('prints the markdown comparison table without --json', async () => {
    const r = await run(['simulate', '--quick', '--out', join(dir, 'md'), '--models', 'bert-base']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^# SplitLLM reproduction/);
    expect(r.stdout).toMatch(/\| BERT \| 16 \| [\d.]+ % \|/);
  });

  it('exits 2 on an unknown model or a bad --decode-steps', async () => {
    const a = await run(['simulate', '--quick', '--out', join(dir, 'x'), '--models', 'gpt5']);
    expect(a.code).toBe(2);
    expect(a.stderr).toMatch(/--models must list some of transformer-base, .*given 'gpt5'/);
    const b = await run(['simulate', '--quick', '--out', join(dir, 'x'), '--decode-steps', '-1']);
    expect(b.code).toBe(2);
    expect(existsSync(join(dir, 'x'))).toBe(false);
  });
});

describe('the sweep', () => {
  it('prices generations when asked: decode steps change the GPT-2 results but not BERT', () => {
    const base = { ranges: QUICK_RANGES, models: ['gpt2-small', 'bert-base'] };
    const single = runSweep({ ...base, decodeSteps: 0 });
    const gen = runSweep({ ...base, decodeSteps: 32 });
    const gpt = (rows: typeof single) => rows.filter((r) => r.model === 'gpt2-small').map((r) => r.work.serverOnly);
    const bert = (rows: typeof single) => rows.filter((r) => r.model === 'bert-base').map((r) => r.work.serverOnly);
    expect(gpt(gen)[0]).toBeGreaterThan(gpt(single)[0]);
    expect(bert(gen)).toEqual(bert(single));
    expect(summarize(gen).infeasible).toBe(0);
  });

  it('classifies placement shapes', () => {
    expect(placementShape(['client', 'client'])).toBe('all-client');
    expect(placementShape(['server', 'server'])).toBe('all-server');
    expect(placementShape(['client', 'server'])).toBe('client-then-server');
    expect(placementShape(['server', 'client', 'client'])).toBe('server-then-client');
    expect(placementShape(['server', 'client', 'server'])).toBe('multi-switch');
  });
});

describe('renderChart', () => {
  it('draws one polyline per line series, escapes text and places points inside the plot', () => {
    const svg = renderChart({
      title: 'A & B <test>', xLabel: 'x', yLabel: 'y',
      series: [
        { name: 'up', points: [{ x: 0, y: 0 }, { x: 10, y: 100 }] },
        { name: 'down', points: [{ x: 0, y: 100 }, { x: 5, y: NaN }, { x: 10, y: 0 }] },
      ],
      width: 400, height: 300,
    });
    expect(svg).toContain('A &amp; B &lt;test&gt;');
    expect(svg.match(/<polyline/g)).toHaveLength(2);
    expect(svg.match(/<circle/g)).toHaveLength(4); // the NaN point is skipped
    for (const m of svg.matchAll(/cx="([\d.]+)" cy="([\d.]+)"/g)) {
      expect(Number(m[1])).toBeGreaterThanOrEqual(0);
      expect(Number(m[1])).toBeLessThanOrEqual(400);
      expect(Number(m[2])).toBeLessThanOrEqual(300);
    }
  });

  it('draws grouped bars with category labels, and a note when there is no data', () => {
    const svg = renderChart({
      kind: 'bar', title: 't', xLabel: 'model', yLabel: '%', xCategories: ['a', 'b', 'c'],
      series: [{ name: 's1', points: [0, 1, 2].map((x) => ({ x, y: x + 1 })) }, { name: 's2', points: [0, 1, 2].map((x) => ({ x, y: 2 })) }],
    });
    expect(svg.match(/<rect x=[^>]*><title>/g)).toHaveLength(6);
    expect(svg).toContain('>b</text>');
    expect(renderChart({ title: 't', xLabel: 'x', yLabel: 'y', series: [] })).toContain('no data');
  });

  it('picks round tick steps', () => {
    expect(niceTicks(0, 100)).toEqual([0, 20, 40, 60, 80, 100]);
    expect(niceTicks(0.3, 1.1, 4)).toEqual([0.4, 0.6, 0.8, 1]);
  });
});
