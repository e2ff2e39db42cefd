import { QUICK_RANGES, placementShape, runSweep, summarize, summarizePhased } from '../src';

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

  it('compares dp-phased with dp and the streamed server-only plan on generative models only', () => {
    const rows = runSweep({ ranges: QUICK_RANGES, models: ['gpt2-small', 'bert-base'], decodeSteps: 31 });
    const gpt = rows.filter((r) => r.model === 'gpt2-small');
    expect(gpt.length).toBeGreaterThan(0);
    for (const r of gpt) {
      for (const p of [r.phased!.e2e, r.phased!.serving]) {
        // dp-phased searches a superset of dp's plans, and dp's includes the streamed all-server one.
        expect(p.work.dpPhased).toBeLessThanOrEqual(p.work.dp * (1 + 1e-9));
        expect(p.work.dp).toBeLessThanOrEqual(p.work.serverOnly * (1 + 1e-9));
        if (!p.phasesDiffer) expect(p.kvBytes).toBe(0);
      }
    }
    expect(rows.filter((r) => r.model === 'bert-base').every((r) => r.phased === undefined)).toBe(true);
    expect(runSweep({ ranges: QUICK_RANGES, models: ['gpt2-small'], decodeSteps: 0 }).every((r) => r.phased === undefined)).toBe(true);
    for (const rule of ['e2e', 'serving'] as const) {
      const s = summarizePhased(rows, rule)!;
      expect(s.configs).toBe(gpt.length);
      expect(s.reductionVsServerOnly.dpPhased).toBeGreaterThanOrEqual(s.reductionVsServerOnly.dp - 1e-12);
    }
    // Under the serving rule some configuration decodes on the device what the server prefilled.
    expect(gpt.some((r) => r.phased!.serving.decodeOnClient && r.phased!.serving.work.dpPhased > 0)).toBe(true);
  });

  it('classifies placement shapes', () => {
    expect(placementShape(['client', 'client'])).toBe('all-client');
    expect(placementShape(['server', 'server'])).toBe('all-server');
    expect(placementShape(['client', 'server'])).toBe('client-then-server');
    expect(placementShape(['server', 'client', 'client'])).toBe('server-then-client');
    expect(placementShape(['server', 'client', 'server'])).toBe('multi-switch');
  });
});
