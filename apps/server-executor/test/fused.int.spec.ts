import * as grpc from '@grpc/grpc-js';
import { readManifest, SplitPipeline, StageInputError } from '@tandem/model';
import type { HostTensor } from '@tandem/protocol';
import { eventually, makeTempModel, type TempModel } from '@tandem/testkit';
import { OnnxStageEngine, WorkerStageEngine, type SessionCache } from '../src';
import { DelegatingEngine } from './delegating-engine';
import { ids } from './session-client';
import { startTestExecutor, type TestExecutor } from './test-executor';

const PROMPTS = [[15496, 11, 995], [464, 2068, 7586, 21831, 18045], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [50256]];
const NEW_TOKENS = 8;

/** A real engine behind a decorator that counts whole-range and per-stage calls. */
class CountingEngine extends DelegatingEngine {
  rangeCalls = 0;
  stageCalls = 0;
  override runBatch(stage: number, inputs: readonly HostTensor[], caches: readonly SessionCache[]): Promise<HostTensor[]> {
    this.stageCalls++;
    return super.runBatch(stage, inputs, caches);
  }
  override runRange(begin: number, end: number, input: HostTensor, cache: SessionCache, lastRowOnly: boolean): Promise<HostTensor> {
    this.rangeCalls++;
    return super.runRange(begin, end, input, cache, lastRowOnly);
  }
  roundCalls = 0;
  override runSteps(
    begin: number,
    end: number,
    inputs: readonly HostTensor[],
    caches: readonly SessionCache[],
    sample?: readonly boolean[],
  ): Promise<HostTensor[]> {
    this.roundCalls++;
    return super.runSteps(begin, end, inputs, caches, sample);
  }
}

/** A test executor with its counting engine. */
interface Exec extends TestExecutor {
  readonly engine: CountingEngine;
}

/** An executor on the worker engine, the fused whole-model session loaded or not, batching on. */
async function startExecutor(dir: string, fused: boolean): Promise<Exec> {
  const engine = new CountingEngine(await WorkerStageEngine.load(dir, { intraOpNumThreads: 1, fuseAllStages: fused }));
  return { ...(await startTestExecutor(engine, { serverId: `fused-${fused}` })), engine };
}

describe('fused whole-model calls on a real executor (EXECUTOR_FUSED)', () => {
  let model: TempModel;
  let on: Exec;
  let off: Exec;
  const expected = new Map<number[], number[]>();

  /** A server-side generation of `n` tokens, collected to the end. */
  async function serverGenerate(e: Exec, prompt: number[], n: number): Promise<number[]> {
    const s = e.session();
    s.open();
    await s.next(1);
    s.generate(1, ids(...prompt), n);
    await s.next(n + 1);
    s.call.end();
    expect((await s.ended).code).toBe(grpc.status.OK);
    return s.tokens().map((t) => t.token);
  }

  beforeAll(async () => {
    model = await makeTempModel();
    [on, off] = await Promise.all([startExecutor(model.dir, true), startExecutor(model.dir, false)]);
    const n = (await readManifest(model.dir)).stages.length;
    const pipe = await SplitPipeline.load(model.dir, 'S'.repeat(n));
    for (const p of PROMPTS) expected.set(p, await pipe.generate(p, { maxNewTokens: NEW_TOKENS }));
    await pipe.close();
  });

  afterAll(async () => {
    for (const e of [on, off]) await e?.stop();
    model?.remove();
  });

  it('gives the same tokens fused and staged, one session at a time, each step of the fused executor one call', async () => {
    expect(on.engine.hasFusedRange(0, on.engine.stageCount)).toBe(true);
    expect(off.engine.hasFusedRange(0, off.engine.stageCount)).toBe(false);
    for (const p of PROMPTS) {
      const before = { range: on.engine.rangeCalls, stage: on.engine.stageCalls };
      const fused = await serverGenerate(on, p, NEW_TOKENS);
      // alone on the executor: every step (prefill and each token) is one fused call
      expect(on.engine.rangeCalls - before.range).toBe(NEW_TOKENS);
      expect(on.engine.stageCalls - before.stage).toBe(0);
      expect(fused).toEqual(expected.get(p));
      expect(await serverGenerate(off, p, NEW_TOKENS)).toEqual(expected.get(p));
    }
    expect(off.engine.rangeCalls).toBe(0);
  });

  it('still batches stage by stage when several sessions wait, tokens unchanged fused on and off', async () => {
    for (const e of [on, off]) {
      const before = await e.status();
      const stageCalls = e.engine.stageCalls;
      const got = await Promise.all(PROMPTS.flatMap((p) => [serverGenerate(e, p, NEW_TOKENS), serverGenerate(e, p, NEW_TOKENS)]));
      PROMPTS.forEach((p, i) => {
        expect(got[2 * i]).toEqual(expected.get(p));
        expect(got[2 * i + 1]).toEqual(expected.get(p));
      });
      const after = await e.status();
      expect(after.batchedSteps).toBeGreaterThan(before.batchedSteps);
      expect(e.engine.stageCalls).toBeGreaterThan(stageCalls); // prompts, and decode steps beside them
      expect(after.stepsCompleted - before.stepsCompleted).toBe(8 * NEW_TOKENS);
    }
    // Fused, decode steps that wait alone together run as decode rounds (EXECUTOR_DECODE_ROUNDS).
    expect(on.engine.roundCalls).toBeGreaterThan(0);
    expect(off.engine.roundCalls).toBe(0);
    await eventually(async () => (await on.status()).activeSessions === 0, { timeoutMs: 3000, what: 'sessions freed' });
  });

  it('has every stage figure and a whole-model figure from the start-up profile; fused steps move the whole figure only', async () => {
    const report = on.server.loadReader();
    const before = report();
    expect(before.stages).toHaveLength(on.engine.stageCount);
    for (const c of before.stages) {
      expect(c.decodeMs).toBeGreaterThan(0);
      if (on.engine.stageKind(c.stage) !== 'head') expect(c.prefillMsPerToken).toBeGreaterThan(0);
    }
    const whole = before.wholeModel!;
    expect(whole.decodeMs).toBeGreaterThan(0);
    expect(whole.prefillMsPerToken).toBeGreaterThan(0);
    const range = on.engine.rangeCalls;
    await serverGenerate(on, PROMPTS[0], NEW_TOKENS);
    expect(on.engine.rangeCalls - range).toBe(NEW_TOKENS);
    const after = report();
    // The stages keep what they cost run one call each (a split's server range); the whole figure took every step.
    expect(after.stages).toEqual(before.stages);
    expect(after.wholeModel!.samples - whole.samples).toBe(NEW_TOKENS);
    expect(after.wholeModel!.decodeMs).toBeGreaterThan(0);
    // The staged executor's whole figure is what its steps cost stage by stage.
    const staged = off.server.loadReader()();
    expect(staged.wholeModel!.decodeMs).toBeGreaterThan(0);
  });
});

describe('WorkerStageEngine.runSteps', () => {
  let model: TempModel;
  afterAll(() => model?.remove());

  it('runs a round of decode steps of sessions at different contexts as the scheduler would stage by stage, bit for bit, sampled where asked', async () => {
    model = await makeTempModel();
    const worker = await WorkerStageEngine.load(model.dir, { intraOpNumThreads: 1, fuseAllStages: true });
    const inline = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    try {
      const n = worker.stageCount;
      const prompts = [[464, 2068, 7586, 21831, 18045, 11], [15496], [1, 2, 3]];
      const wc = prompts.map(() => worker.newCache());
      const ic = prompts.map(() => inline.newCache());
      // Each session's prompt, then two rounds of one token each: the worker in rounds, the inline engine stage by stage.
      for (let i = 0; i < prompts.length; i++) {
        await worker.runRange(0, n, ids(...prompts[i]), wc[i], true);
        let x = ids(...prompts[i]);
        for (let s = 0; s < n; s++) [x] = await inline.runBatch(s, [x], [ic[i]]);
      }
      for (const [round, sample] of [
        [[11, 50256, 7], undefined],
        [
          [13, 9, 500],
          [true, false, true],
        ],
      ] as const) {
        const got = await worker.runSteps(
          0,
          n,
          round.map((t) => ids(t)),
          wc,
          sample,
        );
        // The calls the scheduler makes stage by stage: a position-wise stage batched, attention per session.
        let want = round.map((t) => ids(t));
        for (let s = 0; s < n; s++) {
          if (inline.stageKind(s) !== 'attn') want = await inline.runBatch(s, want, ic, s === n - 1 ? sample : undefined);
          else for (let i = 0; i < want.length; i++) [want[i]] = await inline.runBatch(s, [want[i]], [ic[i]]);
        }
        expect(got.map((t) => [t.dtype, ...t.shape])).toEqual(want.map((t) => [t.dtype, ...t.shape]));
        got.forEach((t, i) =>
          expect(
            Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).equals(
              Buffer.from(want[i].data.buffer, want[i].data.byteOffset, want[i].data.byteLength),
            ),
          ).toBe(true),
        );
        if (sample) expect(got.map((t) => t.dtype)).toEqual(['int64', 'float32', 'int64']);
      }
    } finally {
      await worker.close();
      await inline.close();
    }
  });
});

describe('WorkerStageEngine.runRange', () => {
  let model: TempModel;
  afterAll(() => model?.remove());

  it('equals the stages run one by one, bit for bit, and hands a refused input back intact', async () => {
    model = await makeTempModel();
    const worker = await WorkerStageEngine.load(model.dir, { intraOpNumThreads: 1, fuseAllStages: true });
    const inline = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    try {
      const n = worker.stageCount;
      const wc = worker.newCache();
      const ic = inline.newCache();
      for (const prompt of [[464, 2068, 7586, 21831], [11]]) {
        const fused = await worker.runRange(0, n, ids(...prompt), wc, true);
        let x = ids(...prompt);
        for (let s = 0; s < n; s++) {
          if (inline.stageKind(s) === 'head')
            x = { dtype: 'float32', shape: [1, 1, x.shape[2]], data: (x.data as Float32Array).slice((x.shape[1] - 1) * x.shape[2]) };
          [x] = await inline.runBatch(s, [x], [ic]);
        }
        expect(fused.shape).toEqual([1, 1, worker.vocabSize]);
        expect(Buffer.from((fused.data as Float32Array).buffer).equals(Buffer.from((x.data as Float32Array).buffer))).toBe(true);
      }
      const bad = ids(1, worker.vocabSize + 5);
      const err = await worker.runRange(0, n, bad, wc, true).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StageInputError);
      expect((err as Error).message).toMatch(/input/);
      expect([...(bad.data as BigInt64Array)]).toEqual([1n, BigInt(worker.vocabSize + 5)]);
      worker.releaseCache(wc);
      await expect(worker.runRange(0, n, ids(1), wc, true)).rejects.toThrow(/cache must not be released/);
    } finally {
      await worker.close();
      await inline.close();
    }
  });
});
