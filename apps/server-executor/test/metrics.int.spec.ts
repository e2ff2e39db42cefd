import * as grpc from '@grpc/grpc-js';
import { ServingStatus } from '@tandem/protocol';
import { eventually, expectSamples, healthStatus, requireSample, scrapeMetrics, scrapeText } from '@tandem/testkit';
import { EXECUTOR_SERVICE_NAME, OnnxStageEngine } from '../src';
import { ids } from './session-client';
import { executorForSuite, startTestExecutor, type SuiteExecutor } from './test-executor';

const NEW_TOKENS = 5;

describe('executor metrics on /metrics, after real traffic', () => {
  let e: SuiteExecutor;
  executorForSuite({ serverId: 'metrics-test', metricsPort: 0 }, (started) => (e = started));
  const port = (): number => e.server.metrics.port ?? 0;

  const scrape = (): Promise<string> => scrapeText(port());
  const value = requireSample;

  it('answers health SERVING by its own service name and by the empty name', async () => {
    expect(await healthStatus(e.addr, EXECUTOR_SERVICE_NAME)).toBe(ServingStatus.SERVING);
    expect(await healthStatus(e.addr, '')).toBe(ServingStatus.SERVING);
  });

  it('counts no traffic before any (the start-up profile is not traffic)', async () => {
    expect(port()).toBeGreaterThan(0);
    const text = await scrape();
    const zero = [
      'tandem_executor_generations_started_total',
      'tandem_executor_generated_tokens_total',
      'tandem_executor_step_duration_seconds_count{kind="decode"}',
      'tandem_executor_step_duration_seconds_count{kind="prompt"}',
      'tandem_executor_batch_size_count',
      'tandem_executor_sessions_active',
      'tandem_executor_kv_reserved_bytes',
    ];
    expectSamples(text, Object.fromEntries(zero.map((series) => [series, 0])));
    expect(value(text, 'tandem_executor_kv_limit_bytes')).toBeGreaterThan(0);
  });

  it('counts server-side generations, their tokens and steps, split steps, and sessions as they run', async () => {
    // Two server-side generations at once (a prompt step, then NEW_TOKENS - 1 decode steps each).
    const gens = [ids(15496, 11, 995), ids(1, 2, 3, 4)].map(async (prompt) => {
      const s = e.session();
      s.open();
      await s.next(1);
      s.generate(1, prompt, NEW_TOKENS);
      await s.next(NEW_TOKENS + 1);
      s.call.end();
      expect((await s.ended).code).toBe(grpc.status.OK);
      return s.tokens().length;
    });
    // One split session: a prompt step over every stage, then one decode step; open while scraped.
    const split = e.session();
    split.open();
    await split.next(1);
    split.step(1, 0, e.engine.stageCount, ids(464, 2068, 7586), true);
    const first = await split.next(2);
    if (first.kind?.$case !== 'result' || first.kind.value.output?.$case !== 'token') throw new Error('expected a token');
    split.step(2, 0, e.engine.stageCount, ids(first.kind.value.output.value), true);
    await split.next(3);
    expect(await Promise.all(gens)).toEqual([NEW_TOKENS, NEW_TOKENS]);

    const open = await scrape();
    expect(value(open, 'tandem_executor_sessions_active')).toBe(1);
    expect(value(open, 'tandem_executor_kv_reserved_bytes')).toBe(e.server.kvBytes().used);
    expect(value(open, 'tandem_executor_kv_reserved_bytes')).toBeGreaterThan(0);
    split.call.end();
    await split.ended;

    await eventually(async () => value(await scrape(), 'tandem_executor_sessions_active') === 0, { timeoutMs: 5000, what: 'sessions closed' });
    const text = await scrape();
    expectSamples(text, {
      tandem_executor_generations_started_total: 2,
      'tandem_executor_generations_finished_total{status="completed"}': 2,
      'tandem_executor_generations_finished_total{status="failed"}': 0,
      'tandem_executor_generations_finished_total{status="cancelled"}': 0,
      tandem_executor_generated_tokens_total: 2 * NEW_TOKENS,
      // Steps: 2 prompts + 2 × (NEW_TOKENS - 1) decode steps of the generations, 1 prompt + 1 decode step of the split session.
      'tandem_executor_step_duration_seconds_count{kind="prompt"}': 3,
      'tandem_executor_step_duration_seconds_count{kind="decode"}': 2 * (NEW_TOKENS - 1) + 1,
    });
    // The status counts the same steps.
    expect((await e.status()).stepsCompleted).toBe(3 + 2 * (NEW_TOKENS - 1) + 1);
    // Every step ran in at least one engine call, and each call ran at least one step.
    const calls = value(text, 'tandem_executor_batch_size_count');
    const stepsInCalls = value(text, 'tandem_executor_batch_size_sum');
    expect(stepsInCalls).toBeGreaterThanOrEqual(3 + 2 * (NEW_TOKENS - 1) + 1);
    expect(calls).toBeGreaterThan(0);
    expect(stepsInCalls).toBeGreaterThanOrEqual(calls);
    // The same calls by stage: the split session ran each stage in calls of its own (stage by
    // stage), the generations' steps fused or by stage; every call counted once.
    const byStage = [...Array(e.engine.stageCount).keys()].map((i) => value(text, `tandem_executor_stage_call_duration_seconds_count{stage="${i}"}`));
    for (const n of byStage) expect(n).toBeGreaterThanOrEqual(1);
    const fused = text.includes('stage="fused"') ? value(text, 'tandem_executor_stage_call_duration_seconds_count{stage="fused"}') : 0;
    expect(byStage.reduce((a, b) => a + b, 0) + fused).toBe(calls);
    expect(value(text, 'tandem_executor_kv_reserved_bytes')).toBe(0);
    expect(text).toContain('# TYPE tandem_executor_step_duration_seconds histogram');
  });

  it('counts a generation whose client cancelled as cancelled, with the tokens it made', async () => {
    const before = value(await scrape(), 'tandem_executor_generated_tokens_total');
    const s = e.session();
    s.open();
    await s.next(1);
    s.generate(1, ids(50256), 200);
    await s.next(2); // the first token
    s.call.cancel();
    await eventually(async () => value(await scrape(), 'tandem_executor_generations_finished_total{status="cancelled"}') === 1, {
      timeoutMs: 5000,
      what: 'the cancelled generation counted',
    });
    const text = await scrape();
    expect(value(text, 'tandem_executor_generations_started_total')).toBe(3);
    const made = value(text, 'tandem_executor_generated_tokens_total') - before;
    expect(made).toBeGreaterThanOrEqual(1);
    expect(made).toBeLessThan(200);
  });

  it('counts the KV handed over between the phases of a phased plan, by direction', async () => {
    const before = await scrape();
    const s = e.session();
    s.open();
    await s.next(1);
    s.step(1, 0, e.engine.stageCount, ids(15496, 11, 995), true);
    await s.next(2);
    // Take block 0's attention (3 positions × 512 bytes of keys plus values) and its MLP (a count), then put the attention back.
    s.kvTake(2, 1);
    const chunk = await s.next(3);
    s.kvTake(3, 2);
    await s.next(4);
    if (chunk.kind?.$case !== 'kvChunk' || !chunk.kind.value.key || !chunk.kind.value.value) throw new Error('expected the keys and values');
    s.call.write({ kind: { $case: 'kvPut', value: { stage: 1, offset: 0, tokens: 3, key: chunk.kind.value.key, value: chunk.kind.value.value } } });
    s.kvPut(2, 0, 3);
    s.call.end();
    await s.ended;
    const text = await scrape();
    const delta = (name: string): number => value(text, name) - value(before, name);
    expect(delta('tandem_executor_kv_handover_bytes_total{direction="take"}')).toBe(1536);
    expect(delta('tandem_executor_kv_handover_stages_total{direction="take"}')).toBe(2);
    expect(delta('tandem_executor_kv_handover_bytes_total{direction="put"}')).toBe(1536);
    expect(delta('tandem_executor_kv_handover_stages_total{direction="put"}')).toBe(2);
  });

  it("counts the event loop's garbage-collection pauses by kind, and has every thread's series from the start", async () => {
    const text0 = await scrape();
    for (const thread of ['main', 'engine']) {
      for (const kind of ['minor', 'major', 'incremental', 'weakcb'])
        expect(value(text0, `tandem_executor_gc_pause_duration_seconds_count{thread="${thread}",kind="${kind}"}`)).toBeGreaterThanOrEqual(0);
    }
    const minor0 = value(text0, 'tandem_executor_gc_pause_duration_seconds_count{thread="main",kind="minor"}');
    // The executor shares this process's event loop: young garbage made here is collected there.
    await eventually(async () => {
      const garbage: unknown[] = [];
      for (let i = 0; i < 200_000; i++) garbage.push({ i });
      garbage.length = 0;
      const text = await scrape();
      expect(value(text, 'tandem_executor_gc_pause_duration_seconds_count{thread="main",kind="minor"}')).toBeGreaterThan(minor0);
      expect(value(text, 'tandem_executor_gc_pause_duration_seconds_sum{thread="main",kind="minor"}')).toBeGreaterThan(0);
      return true;
    });
  });

  it('closes the endpoint when the executor stops', async () => {
    const other = await startTestExecutor(await OnnxStageEngine.load(e.model.dir, { intraOpNumThreads: 1 }), { serverId: 'metrics-stop', metricsPort: 0 });
    const p = other.server.metrics.port ?? 0;
    expect((await scrapeMetrics(p)).status).toBe(200);
    await other.stop();
    await expect(scrapeMetrics(p)).rejects.toThrow(/ECONNREFUSED/);
  });
});
