import * as grpc from '@grpc/grpc-js';
import { greedyToken, StageInputError, tokenOfOutput } from '@tandem/model';
import { ExecutorServiceClient, ServingStatus, toWireTensor, type HostTensor, type SessionRequest, type SessionResponse } from '@tandem/protocol';
import { eventually, makeTempModel, withTimeout, type TempModel } from '@tandem/testkit';
import { EngineUnavailableError, OnnxStageEngine, StageScheduler, WorkerStageEngine, type SessionCache, type StageEngine } from '../src';
import { DelegatingEngine } from './delegating-engine';
import { startTestExecutor } from './test-executor';

const ids = (v: number[]): HostTensor => ({ dtype: 'int64', shape: [1, v.length], data: BigInt64Array.from(v, BigInt) });
const prompt = (n: number, seed: number): number[] => Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104_729) % 50_000);
/** A copy of a tensor's bytes (a view would be detached once the tensor is handed to the worker engine). */
const bytes = (t: HostTensor): Buffer => Buffer.from(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
const percentile = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};

/** A real engine behind a decorator that times every call (to know how long the longest batch held the engine). */
class TimedEngine extends DelegatingEngine {
  longestCallMs = 0;
  override async runBatch(stage: number, inputs: readonly HostTensor[], caches: readonly SessionCache[]): Promise<HostTensor[]> {
    const t0 = performance.now();
    try {
      return await super.runBatch(stage, inputs, caches);
    } finally {
      this.longestCallMs = Math.max(this.longestCallMs, performance.now() - t0);
    }
  }
  /** Every call goes through runBatch, so every call is timed. */
  override hasFusedRange(): boolean {
    return false;
  }
}

/** Opens a session, runs one step of stages [0, end) on `input`; resolves with the final status or the answer. */
function oneStep(client: ExecutorServiceClient, input: HostTensor, end: number): Promise<{ answer?: SessionResponse; error?: grpc.ServiceError }> {
  return new Promise((resolve) => {
    const call: grpc.ClientDuplexStream<SessionRequest, SessionResponse> = client.session({ deadline: Date.now() + 60_000 });
    call.on('data', (m: SessionResponse) => {
      if (m.kind?.$case === 'opened') {
        call.write({ kind: { $case: 'step', value: { seq: '1', stageBegin: 0, stageEnd: end, input: toWireTensor(input), sample: false } } });
        return;
      }
      resolve({ answer: m });
      call.end();
    });
    call.on('error', (error: grpc.ServiceError) => resolve({ error }));
    call.write({ kind: { $case: 'open', value: { clientId: 't', planEpoch: '0', modelId: '' } } });
  });
}

describe('WorkerStageEngine (onnxruntime in a worker thread)', () => {
  let tiny: TempModel;
  let small: TempModel;
  beforeAll(async () => {
    tiny = await makeTempModel();
    small = await makeTempModel({ preset: 'small' });
  });
  afterAll(() => {
    tiny.remove();
    small.remove();
  });

  it('computes bit-identical outputs to the in-thread engine: batched prefills, decode steps, the head', async () => {
    const worker = await WorkerStageEngine.load(tiny.dir, { intraOpNumThreads: 1 });
    const inline = await OnnxStageEngine.load(tiny.dir, { intraOpNumThreads: 1 });
    try {
      const trace = async (e: StageEngine): Promise<Buffer[]> => {
        const out: Buffer[] = [];
        const caches = [e.newCache(), e.newCache()];
        let xs: HostTensor[] = [ids(prompt(37, 1)), ids(prompt(5, 2))];
        for (let step = 0; step < 4; step++) {
          for (let s = 0; s < e.stageCount; s++) {
            // attention stages one session per call (as the scheduler does), the others batched
            xs =
              e.stageKind(s) === 'attn'
                ? [(await e.runBatch(s, [xs[0]], [caches[0]]))[0], (await e.runBatch(s, [xs[1]], [caches[1]]))[0]]
                : await e.runBatch(s, xs, caches);
            out.push(...xs.map(bytes));
          }
          xs = [ids([(step * 31 + 7) % 50_000]), ids([(step * 17 + 3) % 50_000])];
        }
        caches.forEach((c) => e.releaseCache(c));
        return out;
      };
      const a = await trace(worker);
      const b = await trace(inline);
      expect(a).toHaveLength(4 * worker.stageCount * 2);
      expect(a.every((x) => x.byteLength > 0)).toBe(true);
      a.forEach((x, i) => expect(x.equals(b[i])).toBe(true));
    } finally {
      await worker.close();
      await inline.close();
    }
  });

  it("samples where the logits are made: a sampled step's output is its greedy token, int64 [1, 1], staged, batched or fused", async () => {
    const worker = await WorkerStageEngine.load(tiny.dir, { intraOpNumThreads: 1, fuseAllStages: true });
    const inline = await OnnxStageEngine.load(tiny.dir, { intraOpNumThreads: 1, fuseAllStages: true });
    try {
      for (const e of [worker, inline] as StageEngine[]) {
        const n = e.stageCount;
        // Two sessions through every stage but the head, then the head batched: the first sampled, the second not.
        const caches = [e.newCache(), e.newCache()];
        let xs: HostTensor[] = [ids(prompt(9, 4)), ids(prompt(3, 5))];
        for (let s = 0; s < n - 1; s++) xs = await Promise.all(xs.map(async (x, i) => (await e.runBatch(s, [x], [caches[i]]))[0]));
        const hiddenCopies = xs.map((x) => ({ ...x, data: Float32Array.from(x.data as Float32Array) }) as HostTensor);
        const [token, logits] = await e.runBatch(n - 1, xs, caches, [true, false]);
        expect(logits.dtype).toBe('float32');
        expect(logits.shape).toEqual([1, 3, e.vocabSize]);
        const want = greedyToken((await e.runBatch(n - 1, [hiddenCopies[0]], [e.newCache()]))[0] as { data: Float32Array }, e.vocabSize);
        expect(token.dtype).toBe('int64');
        expect(token.shape).toEqual([1, 1]);
        expect(Number(token.data[0])).toBe(want);
        // A non-head stage ignores the flag.
        const hidden = (await e.runBatch(0, [ids([1, 2])], [e.newCache()], [true]))[0];
        expect(hidden.dtype).toBe('float32');
        // The fused whole range: the same token as its logits give.
        const input = ids(prompt(11, 6));
        const full = await e.runRange!(0, n, { ...input, data: input.data.slice() } as HostTensor, e.newCache(), true);
        const sampled = await e.runRange!(0, n, input, e.newCache(), true, true);
        expect(sampled.shape).toEqual([1, 1]);
        expect(Number(sampled.data[0])).toBe(greedyToken(full as { data: Float32Array }, e.vocabSize));
        expect(tokenOfOutput(sampled, e.vocabSize)).toBe(tokenOfOutput(full, e.vocabSize));
      }
    } finally {
      await worker.close();
      await inline.close();
    }
  });

  it('refuses bad input with the same error as in-thread and hands the inputs back, so a batch can be retried one by one', async () => {
    const worker = await WorkerStageEngine.load(tiny.dir, { intraOpNumThreads: 1 });
    const inline = await OnnxStageEngine.load(tiny.dir, { intraOpNumThreads: 1 });
    try {
      const bad = (): HostTensor => ids([1, 50_257]);
      const got = await worker.runBatch(0, [bad()], [worker.newCache()]).catch((e: unknown) => e);
      const want = await inline.runBatch(0, [bad()], [inline.newCache()]).catch((e: unknown) => e);
      expect(got).toBeInstanceOf(StageInputError);
      expect((got as StageInputError).message).toBe((want as StageInputError).message);
      expect((got as StageInputError).kind).toBe('invalid');

      // Through the scheduler: the batch fails, is retried one by one, and the good step completes.
      const sched = new StageScheduler(worker, { batching: true, maxBatch: 8, maxBatchTokens: 4096 });
      const good = ids(prompt(6, 3));
      const [ok, refused] = await Promise.allSettled([
        sched.submit('g', 0, worker.stageCount, good, worker.newCache()),
        sched.submit('b', 0, 1, bad(), worker.newCache()),
      ]);
      expect(refused.status).toBe('rejected');
      expect(ok.status).toBe('fulfilled');
      const c = inline.newCache();
      let x = (await inline.runBatch(0, [ids(prompt(6, 3))], [c]))[0];
      for (let s = 1; s < inline.stageCount; s++) x = (await inline.runBatch(s, [x], [c]))[0];
      expect(bytes((ok as PromiseFulfilledResult<{ tensor: HostTensor }>).value.tensor).equals(bytes(x))).toBe(true);
    } finally {
      await worker.close();
      await inline.close();
    }
  });

  it('answers health and status within milliseconds while long prefill batches run', async () => {
    const engine = new TimedEngine(await WorkerStageEngine.load(small.dir, { intraOpNumThreads: 1 }));
    const ex = await startTestExecutor(engine, {
      serverId: 'exec-worker',
      maxMessageBytes: 64 << 20,
      maxBatch: 16,
      maxBatchTokens: 16_000,
      idleTimeoutMs: 60_000,
    });
    engine.longestCallMs = 0; // warm-up and profiling are not the batches under test
    const { client, health: check, status } = ex;
    try {
      await check(); // connections up before timing
      await status();
      // Sixteen 1000-token prefills of the first block (embed, attention, MLP) arrive together:
      // their MLP stages run as one 16,000-token batch (about 16 GFLOP: > 150 ms on one thread
      // even on a quiet machine, where ten of them took 138 ms).
      const t0 = performance.now();
      let finished = false;
      const work = Promise.all(Array.from({ length: 16 }, (_, i) => oneStep(client, ids(prompt(1000, i + 1)), 3))).finally(() => {
        finished = true;
      });
      const latencies: number[] = [];
      const answers: string[] = [];
      while (!finished) {
        const p0 = performance.now();
        if (latencies.length % 2 === 0) answers.push(ServingStatus[await check()]);
        else answers.push(`queue ${(await status()).queueDepth}`);
        latencies.push(performance.now() - p0);
        await new Promise((r) => setTimeout(r, 5));
      }
      const results = await withTimeout(work, 60_000, 'the prefills');
      const workMs = performance.now() - t0;
      for (const r of results) expect(r.answer?.kind?.$case).toBe('result');
      // The test only means something if batches held the engine far longer than the bound below.
      expect(engine.longestCallMs).toBeGreaterThan(150);
      expect(latencies.length).toBeGreaterThan(20);
      expect(answers.filter((a) => a === 'SERVING').length).toBe(Math.ceil(latencies.length / 2));
      expect(answers.some((a) => a.startsWith('queue ') && a !== 'queue 0')).toBe(true); // status saw the work in flight
      const p99 = percentile(latencies, 99);
      const max = Math.max(...latencies);
      process.stderr.write(
        `probes ${latencies.length}, p50 ${percentile(latencies, 50).toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, max ${max.toFixed(1)} ms; longest engine call ${engine.longestCallMs.toFixed(0)} ms, all prefills ${workMs.toFixed(0)} ms\n`,
      );
      // The in-thread engine answers a probe only between engine calls, so its p99 and max come
      // close to the longest call (> 150 ms). With the worker they stay far below it; the bounds
      // leave room for a 2-core machine shared with other jobs (p99 was 33-64 ms there, p50 1 ms).
      // Long prompts now run stage by stage (prefill interleaving), so the longest call is
      // shorter than a whole prefill: the bounds are fractions of it, below what blocking gives.
      expect(p99).toBeLessThan(Math.min(100, engine.longestCallMs / 2));
      expect(max).toBeLessThan(engine.longestCallMs * 0.8);
    } finally {
      await ex.stop(0);
    }
  });

  it('fails the in-flight session with UNAVAILABLE when the thread dies, and keeps answering health (NOT_SERVING) and status', async () => {
    const worker = await WorkerStageEngine.load(small.dir, { intraOpNumThreads: 1 });
    const ex = await startTestExecutor(worker, { serverId: 'exec-crash', maxSessions: 4, maxMessageBytes: 64 << 20, idleTimeoutMs: 60_000 });
    const { client, health: check, status } = ex;
    try {
      expect(await check()).toBe(ServingStatus.SERVING);
      const inFlight = oneStep(client, ids(prompt(1000, 9)), worker.stageCount - 1);
      await eventually(async () => (await status()).queueDepth > 0, { timeoutMs: 5000, what: 'the step in the scheduler' });
      worker.simulateCrash();
      const r = await withTimeout(inFlight, 5000, 'the in-flight session to end');
      expect(r.error?.code).toBe(grpc.status.UNAVAILABLE);
      expect(r.error?.details).toMatch(/^the executor's inference thread exited with code 1; no stage can run until the executor restarts$/);
      await expect(worker.failed).resolves.toBeInstanceOf(EngineUnavailableError);
      expect(await check()).toBe(ServingStatus.NOT_SERVING);
      expect((await status()).queueDepth).toBe(0);
      const late = await oneStep(client, ids([1, 2, 3]), 1);
      expect(late.error?.code).toBe(grpc.status.UNAVAILABLE);
      expect(late.error?.details).toContain('accepts no new sessions');
    } finally {
      await ex.stop(0);
    }
  });
});
