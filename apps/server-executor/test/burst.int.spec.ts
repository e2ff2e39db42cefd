import { ServingStatus, type ExecutorServiceClient } from '@tandem/protocol';
import { eventually, serverGeneration, suiteModel, withTimeout } from '@tandem/testkit';
import { WorkerStageEngine } from '../src';
import { startTestExecutor } from './test-executor';

// A burst of long prompts beside running decodes (issue 9, faults and soak), CI-sized: 16
// concurrent 512-token prompts on the `small` preset arrive while server-side generations
// decode. No session is dropped, the running decodes keep their exact tokens, and health
// answers within 1 s throughout. The executor's loop is reworked elsewhere; this keeps it so.

const prompt = (n: number, seed: number): number[] => Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104_729) % 50_000);

/** One server-side generation of `n` tokens; resolves with its tokens, or rejects with the status it ended with. */
const generate = async (client: ExecutorServiceClient, ids: number[], n: number, onToken?: (i: number) => void): Promise<number[]> =>
  (await serverGeneration(client, ids, n, { clientId: 'burst', deadlineMs: 60_000, onToken })).tokens;

describe('a burst of long prompts beside running decodes', () => {
  const model = suiteModel({ preset: 'small' }, 60_000);

  it('drops no session, keeps the decodes token-identical and answers health within 1 s throughout', async () => {
    const engine = await WorkerStageEngine.load(model.dir, { intraOpNumThreads: 1, fuseAllStages: true });
    const ex = await startTestExecutor(engine, {
      serverId: 'burst',
      maxSessions: 64,
      maxMessageBytes: 64 << 20,
      maxBatch: 16,
      maxBatchTokens: 4096,
      idleTimeoutMs: 60_000,
    });
    const { client, health: check, status } = ex;
    try {
      const DECODES = 2;
      const PROMPT_TOKENS = 256; // four times EXECUTOR_LONG_STEP_TOKENS: prefills, interleaved stage by stage with the decode steps
      const DECODE_TOKENS = 32;
      // What the decodes give undisturbed, one at a time.
      const expected: number[][] = [];
      for (let d = 0; d < DECODES; d++) expected.push(await generate(client, prompt(16, 100 + d), DECODE_TOKENS));
      await check();

      let finished = false;
      const latencies: number[] = [];
      const answers: ServingStatus[] = [];
      const probe = (async () => {
        while (!finished) {
          const p0 = performance.now();
          answers.push(await check());
          latencies.push(performance.now() - p0);
          await new Promise((r) => setTimeout(r, 20));
        }
      })();

      // The decodes start; once each has made a few tokens, the burst arrives.
      let started = 0;
      let releaseBurst!: () => void;
      const decodesRunning = new Promise<void>((r) => {
        releaseBurst = r;
      });
      const decodes = Array.from({ length: DECODES }, (_, d) =>
        generate(client, prompt(16, 100 + d), DECODE_TOKENS, (i) => {
          if (i === 3 && ++started === DECODES) releaseBurst();
        }),
      );
      await withTimeout(decodesRunning, 20_000, 'the decodes under way');
      const t0 = performance.now();
      const burst = Array.from({ length: 16 }, (_, i) => generate(client, prompt(PROMPT_TOKENS, i + 1), 2));
      const [decoded, burstOut] = await withTimeout(Promise.all([Promise.all(decodes), Promise.allSettled(burst)]), 60_000, 'the burst and the decodes');
      const burstMs = performance.now() - t0;
      finished = true;
      await probe;

      const dropped = burstOut.filter((r) => r.status === 'rejected' || r.value.length !== 2);
      expect(dropped).toEqual([]);
      expect(decoded).toEqual(expected);
      expect(answers.every((a) => a === ServingStatus.SERVING)).toBe(true);
      const max = Math.max(...latencies);
      process.stderr.write(
        `burst of 16×${PROMPT_TOKENS} beside ${DECODES} decodes: ${burstMs.toFixed(0)} ms; ${latencies.length} health probes, max ${max.toFixed(1)} ms\n`,
      );
      expect(latencies.length).toBeGreaterThan(5);
      expect(max).toBeLessThan(1000);
      await eventually(async () => (await status()).activeSessions === 0, { timeoutMs: 5000, intervalMs: 50, what: 'every session closed' });
    } finally {
      await ex.stop(0);
    }
  }, 60_000);
});
