import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTempModel, type TempModel } from '@tandem/testkit';
import { runSoak, type SoakReport } from '../src';

// The soak's code path (npm run soak: 200 sessions for 10 minutes), CI-sized: 20 concurrent
// sessions for 20 s against one executor process, every 10th abandoned mid-way. No session may
// leak or fail, and the report and its curves are written.
describe('soak (CI-sized)', () => {
  let model: TempModel;
  let out: string;
  beforeAll(async () => {
    model = await makeTempModel();
    out = mkdtempSync(join(tmpdir(), 'tandem-soak-'));
  });
  afterAll(() => {
    model?.remove();
    if (out) rmSync(out, { recursive: true, force: true });
  });

  it('20 sessions for 20 s: 0 leaked, 0 failed, report and curves written', async () => {
    const r: SoakReport = await runSoak({
      modelDir: model.dir,
      sessions: 20,
      durationMs: 20_000,
      warmupMs: 5000,
      bucketMs: 5000,
      sampleMs: 1000,
      promptTokens: 16,
      newTokens: 16,
      outDir: out,
    });
    process.stderr.write(
      `soak: ${r.sessionsCompleted} completed, ${r.sessionsAbandoned} abandoned, ${r.steps} steps, RSS growth after warm-up max ${(r.rssGrowthMax * 100).toFixed(1)} %, end ${(r.rssGrowthEnd * 100).toFixed(1)} %, p99 per bucket ${r.buckets.map((b) => b.p99Ms.toFixed(0)).join(' ')} ms\n`,
    );
    expect(r.failures).toEqual([]);
    expect(r.leakedSessions).toBe(0);
    expect(r.executorExitedEarly).toBe(false);
    expect(r.sessionsCompleted).toBeGreaterThan(20);
    expect(r.sessionsAbandoned).toBeGreaterThan(0);
    expect(r.buckets).toHaveLength(4);
    expect(r.samples.length).toBeGreaterThan(10);
    expect(JSON.parse(readFileSync(join(out, 'soak.json'), 'utf8')).leakedSessions).toBe(0);
    for (const f of ['soak-rss.svg', 'soak-latency.svg']) expect(readFileSync(join(out, f), 'utf8')).toContain('<svg');
    expect(existsSync(join(out, 'soak.json'))).toBe(true);
  }, 60_000);
});
