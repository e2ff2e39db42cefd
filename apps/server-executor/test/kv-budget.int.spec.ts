import * as grpc from '@grpc/grpc-js';
import { SplitPipeline } from '@tandem/model';
import { eventually, expectRefusal } from '@tandem/testkit';
import { ids, type TestSession } from './session-client';
import { executorForSuite, type SuiteExecutor } from './test-executor';

/** The tiny preset: nEmbd 64, 2 blocks, so 2 × (8 × 64) = 1024 KV bytes per token of a session. */
const BYTES_PER_TOKEN = 1024;
const BUDGET_TOKENS = 40;

describe('server-executor admits by a KV-cache budget in bytes (EXECUTOR_MAX_KV_BYTES)', () => {
  let exec: SuiteExecutor;
  executorForSuite({ serverId: 'exec-kv', maxContextTokens: 64, maxKvBytes: BUDGET_TOKENS * BYTES_PER_TOKEN }, (e) => (exec = e));
  const session = (): TestSession => exec.session();

  afterEach(() => exec.cancelSessions(2000));

  const expectExhausted = async (s: TestSession, ...parts: string[]): Promise<void> => expectRefusal(await s.ended, grpc.status.RESOURCE_EXHAUSTED, ...parts);

  it('refuses a step past the budget, keeps the session holding it correct, and frees its bytes when it ends', async () => {
    const { stageCount } = exec.engine;
    const prompt = Array.from({ length: 30 }, (_, i) => 100 + i);
    const pipe = await SplitPipeline.load(exec.model.dir, 'S'.repeat(stageCount));
    const want = await pipe.generate(prompt, { maxNewTokens: 3 }).finally(() => pipe.close());
    const a = session();
    a.open();
    a.step(1, 0, stageCount, ids(...prompt), true);
    const first = await a.next(2);
    expect(exec.server.kvBytes().used).toBe(30 * BYTES_PER_TOKEN);

    const b = session();
    b.open();
    b.step(1, 0, stageCount, ids(...new Array(15).fill(7)), true);
    await expectExhausted(b, 'EXECUTOR_MAX_KV_BYTES', `<= ${BUDGET_TOKENS * BYTES_PER_TOKEN} bytes`, `needs ${15 * BYTES_PER_TOKEN} bytes more`);

    // the session holding the cache decodes on, with the one-process tokens
    const got = [first.kind?.$case === 'result' && first.kind.value.output?.$case === 'token' ? first.kind.value.output.value : -1];
    for (let i = 0; i < 2; i++) {
      a.step(i + 2, 0, stageCount, ids(got[i]), true);
      const m = await a.next(i + 3);
      got.push(m.kind?.$case === 'result' && m.kind.value.output?.$case === 'token' ? m.kind.value.output.value : -1);
    }
    expect(got).toEqual(want);
    a.call.end();
    await a.ended;
    await eventually(async () => exec.server.kvBytes().used === 0, { timeoutMs: 2000, what: 'KV bytes given back' });

    const c = session();
    c.open();
    c.step(1, 0, stageCount, ids(...new Array(15).fill(7)), true);
    expect((await c.next(2)).kind?.$case).toBe('result');
  });

  it('refuses a server-side generation whose whole cache would not fit, before it runs', async () => {
    const s = session();
    s.open();
    s.generate(1, ids(1, 2, 3, 4, 5), BUDGET_TOKENS); // 5 + 40 - 1 = 44 tokens
    await expectExhausted(s, 'generate needs 45056 bytes more', 'EXECUTOR_MAX_KV_BYTES');
    const ok = session();
    ok.open();
    ok.generate(1, ids(1, 2, 3, 4, 5), BUDGET_TOKENS - 5); // 39 tokens fit
    await ok.next(1 + BUDGET_TOKENS - 5);
    expect(ok.tokens()).toHaveLength(BUDGET_TOKENS - 5);
  });

  it('refuses to open a session while not one more token fits', async () => {
    const full = session();
    full.open();
    full.step(1, 0, exec.engine.stageCount, ids(...new Array(BUDGET_TOKENS).fill(3)), true);
    await full.next(2);
    const late = session();
    late.open();
    await expectExhausted(late, 'not one more token fits', 'EXECUTOR_MAX_KV_BYTES');
  });

  it('counts only attention stages: a step over position-wise stages takes no budget', async () => {
    const s = session();
    s.open();
    s.step(1, 0, 1, ids(...new Array(BUDGET_TOKENS + 10).fill(3))); // embed only: no KV
    expect((await s.next(2)).kind?.$case).toBe('result');
    expect(exec.server.kvBytes().used).toBe(0);
  });
});
