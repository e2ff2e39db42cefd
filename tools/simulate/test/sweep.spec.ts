import { QUICK_RANGES, placementShape, runSweep, summarize } from '../src';

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
