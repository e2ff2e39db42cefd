import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from './run-cli';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'tandem-simulate-test-'));
});
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
