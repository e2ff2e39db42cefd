import type { HostTensor } from '@tandem/protocol';
import type { StageKind } from '@tandem/model';
import { SessionCache, type StageEngine } from './engine';
import { SessionClosedError } from './errors';
import { schedule, StageScheduler, type QueuedStep } from './scheduler';

/** A fake engine: stage s adds s+1 to every element; records each call. Kinds: embed, attn, mlp, attn, mlp, head. */
class FakeEngine implements StageEngine {
  readonly modelId = 'fake';
  readonly stageCount = 6;
  readonly nEmbd = 2;
  readonly nHead = 1;
  readonly vocabSize = 4;
  readonly nPositions = 64;
  readonly calls: { stage: number; batch: number }[] = [];
  /** The shape of every input of every call, by stage. */
  readonly shapes: { stage: number; shape: readonly number[] }[] = [];
  /** Token counts of each call's inputs, in batch order. */
  readonly tokens: number[][] = [];
  failOn?: (stage: number, t: HostTensor) => boolean;
  gate?: Promise<void>;
  stageKind(s: number): StageKind {
    return (['embed', 'attn', 'mlp', 'attn', 'mlp', 'head'] as const)[s];
  }
  newCache(): SessionCache {
    return new SessionCache(undefined, this.stageCount);
  }
  releaseCache(): void {}
  async runBatch(stage: number, inputs: readonly HostTensor[]): Promise<HostTensor[]> {
    this.calls.push({ stage, batch: inputs.length });
    for (const t of inputs) this.shapes.push({ stage, shape: [...t.shape] });
    this.tokens.push(inputs.map((t) => t.shape[1]));
    if (this.gate) await this.gate;
    return inputs.map((t) => {
      if (this.failOn?.(stage, t)) throw new Error(`bad input at stage ${stage}`);
      return { dtype: 'float32', shape: [...t.shape], data: Float32Array.from(t.data as Float32Array, (v) => v + stage + 1) };
    });
  }
  async warmup(): Promise<void> {}
  async close(): Promise<void> {}
}

/** A fresh cache of a six-stage session. */
const cache = (): SessionCache => new SessionCache(undefined, 6);
const tensor = (v: number, t = 1): HostTensor => ({ dtype: 'float32', shape: [1, t, 2], data: new Float32Array(2 * t).fill(v) });

describe('StageScheduler', () => {
  it('runs each step through its stage range in order, exactly once', async () => {
    const engine = new FakeEngine();
    const sched = new StageScheduler(engine, { batching: true, maxBatch: 8 });
    const out = await sched.submit('a', 1, 5, tensor(0), cache());
    expect([...(out.tensor.data as Float32Array)]).toEqual([2 + 3 + 4 + 5, 14]);
    expect(engine.calls.map((c) => c.stage)).toEqual([1, 2, 3, 4]);
  });

  it('batches sessions at the same position-wise stage and keeps them depth-synchronised', async () => {
    const engine = new FakeEngine();
    const sched = new StageScheduler(engine, { batching: true, maxBatch: 8 });
    const outs = await Promise.all([0, 10, 20].map((v, i) => sched.submit(`s${i}`, 0, 6, tensor(v), cache())));
    // embed batched, attn one by one, mlp batched, attn one by one, mlp batched, head batched
    expect(engine.calls).toEqual([
      { stage: 0, batch: 3 },
      { stage: 1, batch: 1 },
      { stage: 1, batch: 1 },
      { stage: 1, batch: 1 },
      { stage: 2, batch: 3 },
      { stage: 3, batch: 1 },
      { stage: 3, batch: 1 },
      { stage: 3, batch: 1 },
      { stage: 4, batch: 3 },
      { stage: 5, batch: 3 },
    ]);
    expect(outs.map((o) => (o.tensor.data as Float32Array)[0])).toEqual([21, 31, 41]);
    expect(sched.batchedStepCount).toBe(12);
  });

  it("reports each step's service time (whole calls it waited for) beside its share of the compute", async () => {
    let clock = 0;
    const timed = new (class extends FakeEngine {
      override async runBatch(stage: number, inputs: readonly HostTensor[]): Promise<HostTensor[]> {
        clock += 6;
        return super.runBatch(stage, inputs);
      }
    })();
    const sched = new StageScheduler(timed, { batching: true, maxBatch: 8, now: () => clock });
    const [a, b] = await Promise.all([sched.submit('a', 4, 6, tensor(0), cache()), sched.submit('b', 4, 6, tensor(0, 2), cache())]);
    // two position-wise stages, each one 6 ms call shared by both (1 and 2 tokens)
    expect(a.serviceMs).toBe(12);
    expect(b.serviceMs).toBe(12);
    expect(a.computeMs).toBeCloseTo(4, 10);
    expect(b.computeMs).toBeCloseTo(8, 10);
    // priced by the figures those calls left (each step's share): what the planner multiplies by the stretch
    expect(a.nominalMs).toBeCloseTo(4, 10);
    expect(b.nominalMs).toBeCloseTo(8, 10);
    expect([a.long, b.long]).toEqual([false, true]); // no longStepTokens: any prompt is long
    expect([a.positions, b.positions]).toEqual([1, 2]);
    expect(timed.calls).toEqual([
      { stage: 4, batch: 2 },
      { stage: 5, batch: 2 },
    ]);
  });

  it('runs one session at a time when batching is off', async () => {
    const engine = new FakeEngine();
    const sched = new StageScheduler(engine, { batching: false, maxBatch: 8 });
    await Promise.all([0, 1].map((v) => sched.submit(`s${v}`, 4, 6, tensor(v), cache())));
    expect(engine.calls.every((c) => c.batch === 1)).toBe(true);
    expect(engine.calls).toHaveLength(4);
  });

  it('runs the head on the last position only when asked, and on every position otherwise', async () => {
    const engine = new FakeEngine();
    const sched = new StageScheduler(engine, { batching: true, maxBatch: 8 });
    const rows: HostTensor = { dtype: 'float32', shape: [1, 3, 2], data: Float32Array.of(0, 0, 10, 10, 20, 20) };
    const [cut, full] = await Promise.all([sched.submit('cut', 1, 6, rows, cache(), { lastRowOnly: true }), sched.submit('full', 1, 6, rows, cache())]);
    // stages 1..5 add 2+3+4+5+6 = 20 to every element; only the last row (20) is kept with lastRowOnly
    expect(cut.tensor.shape).toEqual([1, 1, 2]);
    expect([...(cut.tensor.data as Float32Array)]).toEqual([40, 40]);
    expect([...(full.tensor.data as Float32Array)]).toEqual([20, 20, 30, 30, 40, 40]);
    expect(engine.shapes.filter((x) => x.stage === 5).map((x) => x.shape)).toEqual([
      [1, 1, 2],
      [1, 3, 2],
    ]);
    expect(engine.shapes.filter((x) => x.stage === 4).map((x) => x.shape)).toEqual([
      [1, 3, 2],
      [1, 3, 2],
    ]);
    // a step that starts at the head is cut too
    const headOnly = await sched.submit('h', 5, 6, rows, cache(), { lastRowOnly: true });
    expect(headOnly.tensor.shape).toEqual([1, 1, 2]);
    expect([...(headOnly.tensor.data as Float32Array)]).toEqual([26, 26]);
  });

  it("asks the engine to sample a sampled step's output at its head call only, per step of a batch", async () => {
    const flags: { stage: number; sample: readonly boolean[] | undefined }[] = [];
    const engine = new (class extends FakeEngine {
      override async runBatch(
        stage: number,
        inputs: readonly HostTensor[],
        _caches?: readonly SessionCache[],
        sample?: readonly boolean[],
      ): Promise<HostTensor[]> {
        flags.push({ stage, sample });
        return super.runBatch(stage, inputs);
      }
    })();
    const sched = new StageScheduler(engine, { batching: true, maxBatch: 8 });
    await Promise.all([
      sched.submit('a', 4, 6, tensor(0), cache(), { sample: true }),
      sched.submit('b', 4, 6, tensor(1), cache()),
      sched.submit('c', 4, 6, tensor(2), cache(), { sample: true }),
      // ends before the head: nothing to sample
      sched.submit('d', 4, 5, tensor(3), cache(), { sample: true }),
    ]);
    expect(flags).toEqual([
      { stage: 4, sample: undefined },
      { stage: 5, sample: [true, false, true] },
    ]);
  });

  it('fails only the bad input of a batch; the others complete', async () => {
    const engine = new FakeEngine();
    engine.failOn = (stage, t) => stage === 2 && (t.data as Float32Array)[0] === 666 + 2;
    const sched = new StageScheduler(engine, { batching: true, maxBatch: 8 });
    const [good, bad] = await Promise.allSettled([sched.submit('g', 1, 3, tensor(1), cache()), sched.submit('b', 1, 3, tensor(666), cache())]);
    expect(good.status).toBe('fulfilled');
    expect(bad.status).toBe('rejected');
    expect(sched.depth).toBe(0);
  });

  it('cancels waiting steps at once and a running one when its call returns', async () => {
    const engine = new FakeEngine();
    let open!: () => void;
    engine.gate = new Promise<void>((r) => {
      open = r;
    });
    const sched = new StageScheduler(engine, { batching: false, maxBatch: 8 });
    const running = sched.submit('x', 1, 6, tensor(0), cache());
    const waiting = sched.submit('y', 1, 6, tensor(0), cache());
    await new Promise((r) => setImmediate(r));
    expect(engine.calls).toHaveLength(1); // x is inside the engine call
    const reason = new SessionClosedError('cancelled by the client');
    const yGone = sched.cancelSession('y', reason);
    await expect(waiting).rejects.toBe(reason);
    await yGone;
    const xGone = sched.cancelSession('x', reason);
    let xIdle = false;
    void xGone.then(() => {
      xIdle = true;
    });
    await Promise.resolve();
    expect(xIdle).toBe(false); // x is inside the engine call: its cache must not be freed yet
    open();
    await expect(running).rejects.toBe(reason);
    await xGone;
    expect(engine.calls).toHaveLength(1); // x never ran a second stage
    expect(sched.depth).toBe(0);
  });

  describe('token budget (maxBatchTokens)', () => {
    /** Submits steps of the given token counts at the same instant, each running the mlp stage 2 only. */
    const runAtMlp = async (lengths: number[], opts: { maxBatch?: number; maxBatchTokens?: number }) => {
      const engine = new FakeEngine();
      const sched = new StageScheduler(engine, { batching: true, maxBatch: opts.maxBatch ?? 16, maxBatchTokens: opts.maxBatchTokens });
      const outs = await Promise.all(lengths.map((t, i) => sched.submit(`s${i}`, 2, 3, tensor(i, t), cache())));
      return { engine, outs };
    };

    it('takes waiting steps while their total tokens stay within the budget', async () => {
      const { engine } = await runAtMlp([3, 3, 3, 3, 3], { maxBatchTokens: 7 });
      expect(engine.tokens).toEqual([[3, 3], [3, 3], [3]]);
    });

    it('always runs at least one step, alone when it is longer than the budget', async () => {
      const { engine, outs } = await runAtMlp([10, 1, 1], { maxBatchTokens: 4 });
      expect(engine.tokens).toEqual([[10], [1, 1]]);
      expect(outs.map((o) => o.tensor.shape[1])).toEqual([10, 1, 1]);
    });

    it('lets a shorter step behind a long one join, and the long one heads the next call', async () => {
      const { engine } = await runAtMlp([2, 5, 2, 1], { maxBatchTokens: 5 });
      expect(engine.tokens).toEqual([[2, 2, 1], [5]]);
    });

    it('keeps maxBatch as the cap on sessions within the token budget', async () => {
      const { engine } = await runAtMlp([1, 1, 1, 1, 1], { maxBatch: 2, maxBatchTokens: 100 });
      expect(engine.tokens).toEqual([[1, 1], [1, 1], [1]]);
    });

    it('has no token limit when none is set', async () => {
      const { engine } = await runAtMlp([600, 600, 600], {});
      expect(engine.tokens).toEqual([[600, 600, 600]]);
    });

    it('does not batch attention stages, whatever the budget', async () => {
      const engine = new FakeEngine();
      const sched = new StageScheduler(engine, { batching: true, maxBatch: 16, maxBatchTokens: 1000 });
      await Promise.all([1, 2].map((t, i) => sched.submit(`a${i}`, 1, 2, tensor(i, t), cache())));
      expect(engine.tokens).toEqual([[1], [2]]);
    });
  });

  describe('fused whole-range calls', () => {
    /**
     * The fake engine with [0, 6) fused: runRange applies the same stages as one call (cutting
     * to the last row before the head when asked). A clock advances by stage+1 ms per staged
     * call and by `fusedMs` per fused call, so the statistics are exact.
     */
    class FusedEngine extends FakeEngine {
      readonly ranges: { begin: number; end: number; lastRowOnly: boolean }[] = [];
      clock = 0;
      fusedMs = 10.5;
      failRange = false;
      hasFusedRange(begin: number, end: number): boolean {
        return begin === 0 && end === 6;
      }
      override async runBatch(stage: number, inputs: readonly HostTensor[]): Promise<HostTensor[]> {
        const out = await super.runBatch(stage, inputs);
        this.clock += stage + 1;
        return out;
      }
      /** Each fused call's `sample`. */
      readonly samples: (boolean | undefined)[] = [];
      async runRange(begin: number, end: number, input: HostTensor, _cache: SessionCache, lastRowOnly: boolean, sample?: boolean): Promise<HostTensor> {
        this.ranges.push({ begin, end, lastRowOnly });
        this.samples.push(sample);
        if (this.gate) await this.gate;
        if (this.failRange) throw new Error('bad range input');
        this.clock += this.fusedMs;
        let data = Float32Array.from(input.data as Float32Array);
        let t = input.shape[1];
        for (let s = begin; s < end; s++) {
          if (lastRowOnly && this.stageKind(s) === 'head' && t > 1) {
            data = data.slice((t - 1) * 2);
            t = 1;
          }
          data = data.map((v) => v + s + 1);
        }
        return { dtype: 'float32', shape: [1, t, 2], data };
      }
    }
    const make = (batching = true): { engine: FusedEngine; sched: StageScheduler } => {
      const engine = new FusedEngine();
      return { engine, sched: new StageScheduler(engine, { batching, maxBatch: 8, now: () => engine.clock }) };
    };

    it('runs decode steps waiting together as one round (runSteps) when rounds are on, with the staged results and shares of its time', async () => {
      class RoundEngine extends FusedEngine {
        readonly rounds: { begin: number; end: number; steps: number; sample?: readonly boolean[] }[] = [];
        roundMs = 12;
        async runSteps(
          begin: number,
          end: number,
          inputs: readonly HostTensor[],
          _c: readonly SessionCache[],
          sample?: readonly boolean[],
        ): Promise<HostTensor[]> {
          this.rounds.push({ begin, end, steps: inputs.length, sample });
          this.clock += this.roundMs;
          let sum = 0;
          for (let s = begin; s < end; s++) sum += s + 1;
          return inputs.map((t) => ({ dtype: 'float32', shape: [...t.shape], data: Float32Array.from(t.data as Float32Array, (v) => v + sum) }));
        }
      }
      const engine = new RoundEngine();
      const sched = new StageScheduler(engine, { batching: true, maxBatch: 8, rounds: true, now: () => engine.clock });
      const outs = await Promise.all([0, 10, 20].map((v, i) => sched.submit(`s${i}`, 0, 6, tensor(v), cache(), { sample: i !== 1 })));
      expect(engine.rounds).toEqual([{ begin: 0, end: 6, steps: 3, sample: [true, false, true] }]);
      expect(engine.calls).toHaveLength(0);
      expect(outs.map((o) => [...(o.tensor.data as Float32Array)])).toEqual([
        [21, 21],
        [31, 31],
        [41, 41],
      ]);
      expect(outs.map((o) => o.computeMs)).toEqual([4, 4, 4]);
      expect(sched.wholeStats.snapshot()[0]).toMatchObject({ decodeMs: 4, samples: 3 }); // each step's share, in the whole figure
      // A prompt waiting beside them: stage by stage, as before.
      await Promise.all([sched.submit('p', 0, 6, tensor(0, 3), cache()), sched.submit('q', 0, 6, tensor(0), cache())]);
      expect(engine.rounds).toHaveLength(1);
      // Without rounds, the same steps run stage by stage.
      const plain = new RoundEngine();
      const staged = new StageScheduler(plain, { batching: true, maxBatch: 8, now: () => plain.clock });
      const again = await Promise.all([0, 10, 20].map((v, i) => staged.submit(`s${i}`, 0, 6, tensor(v), cache())));
      expect(plain.rounds).toHaveLength(0);
      expect(again.map((o) => [...(o.tensor.data as Float32Array)])).toEqual(outs.map((o) => [...(o.tensor.data as Float32Array)]));
    });

    it('fails every step of a round that failed (its stages may have run), and the scheduler goes on', async () => {
      class FailingRounds extends FusedEngine {
        async runSteps(): Promise<HostTensor[]> {
          throw new Error('round failed');
        }
      }
      const engine = new FailingRounds();
      const sched = new StageScheduler(engine, { batching: true, maxBatch: 8, rounds: true, now: () => engine.clock });
      const got = await Promise.allSettled([0, 1].map((v) => sched.submit(`s${v}`, 0, 6, tensor(v), cache())));
      expect(got.map((r) => (r.status === 'rejected' ? (r.reason as Error).message : 'ok'))).toEqual(['round failed', 'round failed']);
      const alone = await sched.submit('a', 0, 6, tensor(0), cache());
      expect([...(alone.tensor.data as Float32Array)]).toEqual([21, 21]);
    });

    it("passes a sampled step's sample to its fused call", async () => {
      const { engine, sched } = make();
      await sched.submit('a', 0, 6, tensor(0), cache(), { lastRowOnly: true, sample: true });
      await sched.submit('b', 0, 6, tensor(0), cache(), { lastRowOnly: true });
      expect(engine.samples).toEqual([true, false]);
    });

    it('runs a lone step over a fused range as one engine call, with the staged result', async () => {
      const { engine, sched } = make();
      const staged = await sched.submit('a', 0, 6, tensor(0), cache(), { fuse: false });
      expect(engine.calls).toHaveLength(6);
      const fused = await sched.submit('a', 0, 6, tensor(0), cache());
      expect(engine.ranges).toEqual([{ begin: 0, end: 6, lastRowOnly: false }]);
      expect(engine.calls).toHaveLength(6); // no stage call for the fused step
      expect([...(fused.tensor.data as Float32Array)]).toEqual([...(staged.tensor.data as Float32Array)]);
      expect(fused.computeMs).toBe(10.5);
      expect(sched.busyTimeMs).toBe(21 + 10.5);
    });

    it('keeps per-stage figures from stage-by-stage calls only, and records whole steps apart: fused alone, shares when batched', async () => {
      const { engine, sched } = make();
      await sched.submit('a', 0, 6, tensor(0), cache(), { fuse: false }); // decode figures 1..6 ms (sum 21)
      // A step that may not fuse (the profile's staged round) is not how whole steps run: no whole figure.
      expect(sched.wholeStats.snapshot()[0]).toMatchObject({ decodeMs: 0, samples: 0 });
      await sched.submit('a', 0, 6, tensor(0), cache()); // alone: one fused call of 10.5 ms
      expect(engine.ranges).toHaveLength(1);
      // A fused call leaves the stages as measured one by one (what a split's server range costs).
      sched.stats.snapshot().forEach((c) => expect(c).toMatchObject({ decodeMs: c.stage + 1, samples: 1 }));
      expect(sched.wholeStats.snapshot()[0]).toMatchObject({ decodeMs: 10.5, samples: 1 });
      // Two whole steps together run stage by stage, batched: each is recorded with its shares of the calls.
      const [b, c] = await Promise.all(['b', 'c'].map((id) => sched.submit(id, 0, 6, tensor(0), cache())));
      expect(engine.ranges).toHaveLength(1);
      expect(b.batchedStages).toBeGreaterThan(0);
      const afterB = 10.5 + 0.2 * (b.computeMs - 10.5);
      expect(sched.wholeStats.snapshot()[0].decodeMs).toBeCloseTo(afterB + 0.2 * (c.computeMs - afterB), 10);
      expect(sched.wholeStats.snapshot()[0].samples).toBe(3);
      // A split's range (not every stage) records its stages, never the whole figure.
      await sched.submit('d', 2, 6, tensor(0), cache());
      expect(sched.wholeStats.snapshot()[0].samples).toBe(3);
      expect(sched.stats.snapshot()[2].samples).toBe(4);
    });

    it("fits the whole step's decode over its context (the positions its cache held before it) and prices its nominal time by it", async () => {
      const { engine, sched } = make();
      await sched.submit('a', 0, 6, tensor(0), cache(), { fuse: false });
      // Fused decode steps that cost 4 ms plus 0.02 ms per position held.
      for (const context of [10, 60, 150, 30, 220, 90, 300, 45, 120, 260]) {
        const held = cache();
        held.advance(0, 6, context);
        engine.fusedMs = 4 + 0.02 * context;
        await sched.submit(`s${context}`, 0, 6, tensor(0), held);
        // The step advanced the cache it ran on, after its figures were recorded.
        expect(held.tokensAt(0)).toBe(context + 1);
      }
      const line = sched.wholeStats.decodeLine(0);
      expect(line?.fixedMs).toBeCloseTo(4, 6);
      expect(line?.msPerContextToken).toBeCloseTo(0.02, 6);
      // Staged calls cost the same at every context (stage + 1 ms): no line for the stages.
      expect(sched.stats.decodeLine(1)).toBeUndefined();
      // A step at 500 positions that took what the line says ran at its nominal time: stretch 1.
      const long = cache();
      long.advance(0, 6, 500);
      engine.fusedMs = 14;
      const out = await sched.submit('long', 0, 6, tensor(0), long);
      expect(out.nominalMs).toBeCloseTo(14, 3);
    });

    it('prices a whole step by the whole-model figure in its nominal time, a split by its stages', async () => {
      const { engine, sched } = make();
      await sched.submit('a', 0, 6, tensor(0), cache(), { fuse: false });
      engine.fusedMs = 7;
      const fused = await sched.submit('a', 0, 6, tensor(0), cache());
      expect(fused.nominalMs).toBe(7);
      const split = await sched.submit('a', 3, 6, tensor(0), cache());
      expect(split.nominalMs).toBe(4 + 5 + 6);
    });

    it('records a sampled prefill whole, per prompt position, and leaves the stages alone', async () => {
      const { engine, sched } = make();
      await sched.submit('a', 0, 6, tensor(0, 3), cache(), { fuse: false, lastRowOnly: true });
      const before = sched.stats.snapshot();
      expect(before[5].prefillMsPerToken).toBe(0); // the head saw one row
      engine.fusedMs = 10.5;
      const out = await sched.submit('a', 0, 6, tensor(0, 3), cache(), { lastRowOnly: true });
      expect(out.tensor.shape).toEqual([1, 1, 2]);
      expect(engine.ranges).toEqual([{ begin: 0, end: 6, lastRowOnly: true }]);
      expect(sched.stats.snapshot()).toEqual(before);
      expect(sched.wholeStats.snapshot()[0]).toMatchObject({ prefillMsPerToken: 3.5, decodeMs: 0, samples: 1 });
    });

    it('counts a fused call in compute, busy time and the whole figure, in no stage', async () => {
      const { engine, sched } = make();
      await sched.submit('a', 0, 6, tensor(0), cache());
      expect(engine.ranges).toHaveLength(1);
      expect(sched.busyTimeMs).toBe(10.5);
      expect(sched.stats.snapshot().every((c) => c.samples === 0)).toBe(true);
      expect(sched.wholeStats.snapshot()[0].decodeMs).toBe(10.5);
    });

    it('runs stage by stage and batches when another step waits at the same first stage', async () => {
      const { engine, sched } = make();
      const outs = await Promise.all([0, 10, 20].map((v, i) => sched.submit(`s${i}`, 0, 6, tensor(v), cache())));
      expect(engine.ranges).toHaveLength(0);
      expect(engine.calls[0]).toEqual({ stage: 0, batch: 3 });
      expect(sched.batchedStepCount).toBe(12);
      expect(outs.map((o) => (o.tensor.data as Float32Array)[0])).toEqual([21, 31, 41]);
    });

    it('fuses every step when batching is off (each would run alone anyway)', async () => {
      const { engine, sched } = make(false);
      await Promise.all([0, 10].map((v, i) => sched.submit(`s${i}`, 0, 6, tensor(v), cache())));
      expect(engine.ranges).toHaveLength(2);
      expect(engine.calls).toHaveLength(0);
    });

    it('runs stage by stage a step whose range is not fused, or that may not be fused', async () => {
      const { engine, sched } = make();
      await sched.submit('a', 1, 6, tensor(0), cache());
      await sched.submit('a', 0, 5, tensor(0), cache());
      await sched.submit('a', 0, 6, tensor(0), cache(), { fuse: false });
      expect(engine.ranges).toHaveLength(0);
      expect(engine.calls).toHaveLength(5 + 5 + 6);
    });

    it('lets a session that finished a fused step join the steps waiting for the next call', async () => {
      const { engine, sched } = make();
      let open!: () => void;
      engine.gate = new Promise<void>((r) => {
        open = r;
      });
      // a decodes two tokens: its second step is submitted as soon as its first resolves
      const a = sched.submit('a', 0, 6, tensor(0), cache()).then(() => sched.submit('a', 0, 6, tensor(0), cache()));
      await new Promise((r) => setImmediate(r));
      expect(engine.ranges).toHaveLength(1); // a runs alone, fused
      const b = sched.submit('b', 0, 6, tensor(0), cache()); // arrives during a's fused call
      engine.gate = undefined;
      open();
      await Promise.all([a, b]);
      expect(engine.ranges).toHaveLength(1); // a's next step met b at stage 0: batched, not a second fused call
      expect(engine.calls[0]).toEqual({ stage: 0, batch: 2 });
    });

    it('runs a decode loop stage by stage while a deeper step not yet started waits, so it does not pass that step call after call', async () => {
      for (const batching of [true, false]) {
        // maxWaitMs out of reach: only the fusing rule can let b run while a decodes
        const engine = new FusedEngine();
        const sched = new StageScheduler(engine, { batching, maxBatch: 8, maxWaitMs: 1e9, now: () => engine.clock });
        let aTokens = 0;
        // a decodes 20 tokens on the server, each step submitted as soon as the last resolves
        const a = (async (): Promise<void> => {
          for (let i = 0; i < 20; i++) {
            await sched.submit('a', 0, 6, tensor(0), cache());
            aTokens++;
          }
        })();
        await new Promise((r) => setImmediate(r));
        let aTokensWhenBDone = -1;
        // b's server range starts at stage 3 (its first stages ran on its client): deeper than a's every step
        const b = sched.submit('b', 3, 6, tensor(0), cache()).then((o) => {
          aTokensWhenBDone = aTokens;
          return o;
        });
        await Promise.all([a, b]);
        expect([...((await b).tensor.data as Float32Array)]).toEqual([15, 15]);
        // a's first step was fused before b came; its second catches up with b at stage 3 and they go on together
        expect({ batching, aTokensWhenBDone }).toEqual({ batching, aTokensWhenBDone: 2 });
        // once b is done, a is alone again and fuses
        expect(engine.ranges.length).toBeGreaterThanOrEqual(17);
      }
    });

    it('lets a step under way finish before a step that could run fused starts, which then runs fused', async () => {
      const { engine, sched } = make();
      const order: string[] = [];
      // c runs stage by stage (it may not fuse); a's steps arrive once c's first call is under way
      let open!: () => void;
      engine.gate = new Promise<void>((r) => {
        open = r;
      });
      const c = sched.submit('c', 0, 6, tensor(0), cache(), { fuse: false }).then(() => order.push('c'));
      await new Promise((r) => setImmediate(r));
      expect(engine.calls).toHaveLength(1); // c's first call, held at the gate
      engine.gate = undefined;
      const a = (async (): Promise<void> => {
        for (let i = 0; i < 3; i++) {
          await sched.submit('a', 0, 6, tensor(0), cache());
          order.push(`a${i}`);
        }
      })();
      open();
      await Promise.all([a, c]);
      expect(order).toEqual(['c', 'a0', 'a1', 'a2']);
      // every one of a's steps fused: none paid the stage-by-stage calls of catching up with c
      expect(engine.ranges).toHaveLength(3);
      expect(engine.calls.map((x) => x.batch)).toEqual([1, 1, 1, 1, 1, 1]);
    });

    it('lets a step that waited maxWaitMs run before shallower ones, so deep steps are not starved', async () => {
      const run = async (maxWaitMs: number): Promise<{ deepDone: boolean }> => {
        const engine = new FusedEngine();
        const sched = new StageScheduler(engine, { batching: false, maxBatch: 8, maxWaitMs, now: () => engine.clock });
        // a new session's step arrives at stage 0 with every call (1..6 ms per stage): there is always a shallower step
        const pending: Promise<unknown>[] = [];
        let n = 0;
        const arrive = (): void => {
          if (n < 60) pending.push(sched.submit(`s${n++}`, 0, 6, tensor(0), cache(), { fuse: false }));
        };
        const inner = engine.runBatch.bind(engine);
        engine.runBatch = async (stage, inputs) => {
          arrive();
          return inner(stage, inputs);
        };
        arrive();
        let deepDone = false;
        const deep = sched.submit('deep', 4, 6, tensor(0), cache(), { fuse: false }).then((o) => {
          deepDone = true;
          return o;
        });
        await Promise.all(pending.slice(0, 10));
        const seen = { deepDone };
        await Promise.all([deep, ...pending]);
        expect([...((await deep).tensor.data as Float32Array)]).toEqual([11, 11]);
        return seen;
      };
      // by the time 10 of the stream's steps are done, the deep step has run only with the bound
      expect((await run(20)).deepDone).toBe(true);
      expect((await run(1e9)).deepDone).toBe(false);
    });

    describe('prefill interleaving', () => {
      const interleaved = (maxStallMs: number): { engine: FusedEngine; sched: StageScheduler } => {
        const engine = new FusedEngine();
        return { engine, sched: new StageScheduler(engine, { batching: true, maxBatch: 8, longStepTokens: 4, maxStallMs, now: () => engine.clock }) };
      };

      it('runs a long step stage by stage, never fused, with the same result', async () => {
        const { engine, sched } = interleaved(10);
        const out = await sched.submit('p', 0, 6, tensor(0, 8), cache(), { lastRowOnly: true });
        expect(engine.ranges).toHaveLength(0);
        expect(engine.calls.map((c) => c.stage)).toEqual([0, 1, 2, 3, 4, 5]);
        expect([...(out.tensor.data as Float32Array)]).toEqual([21, 21]);
        // a short step still runs fused
        await sched.submit('d', 0, 6, tensor(0), cache());
        expect(engine.ranges).toHaveLength(1);
      });

      /**
       * Holds the engine at its first call, submits an 8-token prefill and, once the prefill is in
       * the engine (`held` runs then), a one-token decode step; lets the engine go and resolves
       * with the order the two finished in.
       */
      const decodeDuringPrefill = async (engine: FusedEngine, sched: StageScheduler, held: () => void = () => {}): Promise<string[]> => {
        let open!: () => void;
        engine.gate = new Promise<void>((r) => {
          open = r;
        });
        const order: string[] = [];
        const prefill = sched.submit('p', 0, 6, tensor(0, 8), cache()).then(() => order.push('prefill'));
        await new Promise((r) => setImmediate(r));
        held();
        const decode = sched.submit('d', 0, 6, tensor(0), cache()).then(() => order.push('decode'));
        engine.gate = undefined;
        open();
        await Promise.all([prefill, decode]);
        return order;
      };

      it('runs a decode step that arrives during a prefill before the rest of the prefill', async () => {
        const { engine, sched } = interleaved(1000);
        const order = await decodeDuringPrefill(engine, sched, () => {
          expect(engine.calls).toEqual([{ stage: 0, batch: 1 }]); // the prefill's first stage is in the engine
        });
        expect(order).toEqual(['decode', 'prefill']);
        expect(engine.ranges).toHaveLength(1); // the decode step ran fused, alone
        expect(engine.calls.map((c) => c.batch)).toEqual([1, 1, 1, 1, 1, 1]); // the prefill never joined it
      });

      it('without interleaving, the same decode step waits for the whole prefill', async () => {
        const engine = new FusedEngine();
        const sched = new StageScheduler(engine, { batching: true, maxBatch: 8, now: () => engine.clock });
        expect(await decodeDuringPrefill(engine, sched)).toEqual(['prefill', 'decode']);
      });

      it('gives a long step held back for maxStallMs the next call, so prefills advance under steady decoding', async () => {
        const { engine, sched } = interleaved(5);
        // Two sessions decode continuously (each submits its next step when one resolves);
        // fused decode calls take 10.5 ms on the clock, so the prefill is stalled after each.
        let decoding = true;
        const decodeLoop = async (id: string): Promise<number> => {
          let n = 0;
          while (decoding) {
            await sched.submit(id, 0, 6, tensor(0), cache());
            n++;
          }
          return n;
        };
        const loops = [decodeLoop('d1'), decodeLoop('d2')];
        await new Promise((r) => setImmediate(r));
        const out = await sched.submit('p', 0, 6, tensor(0, 8), cache(), { lastRowOnly: true });
        decoding = false;
        const steps = await Promise.all(loops);
        expect([...(out.tensor.data as Float32Array)]).toEqual([21, 21]);
        expect(engine.calls.filter((c) => c.batch === 1 && engine.tokens[engine.calls.indexOf(c)][0] === 8)).toHaveLength(5); // stages 0-4 at 8 rows
        expect(steps[0] + steps[1]).toBeGreaterThan(2); // decoding went on while the prefill advanced
      });
    });

    it('gives two prefills at once at most half of the engine while decode steps wait', async () => {
      // Long calls cost 24 ms more than short ones: each prefill, stalled behind the other's
      // call, was due again at once, and the two took every call in turn.
      const engine = new FusedEngine();
      const sched = new StageScheduler(engine, { batching: true, maxBatch: 8, longStepTokens: 4, maxStallMs: 10, now: () => engine.clock });
      const longCalls: { start: number; end: number }[] = [];
      const base = engine.runBatch.bind(engine);
      engine.runBatch = async (stage: number, inputs: readonly HostTensor[]): Promise<HostTensor[]> => {
        const start = engine.clock;
        const out = await base(stage, inputs);
        if (inputs[0].shape[1] > 4) {
          engine.clock += 24;
          longCalls.push({ start, end: engine.clock });
        }
        return out;
      };
      let decoding = true;
      const decodeLoop = async (id: string): Promise<void> => {
        while (decoding) await sched.submit(id, 0, 6, tensor(0), cache());
      };
      const loops = [decodeLoop('d1'), decodeLoop('d2')];
      await new Promise((r) => setImmediate(r));
      await Promise.all([
        sched.submit('p1', 0, 6, tensor(0, 8), cache(), { lastRowOnly: true }),
        sched.submit('p2', 0, 6, tensor(0, 8), cache(), { lastRowOnly: true }),
      ]);
      decoding = false;
      await Promise.all(loops);
      const span = longCalls[longCalls.length - 1].end - longCalls[0].start;
      const busy = longCalls.reduce((a, c) => a + c.end - c.start, 0);
      expect(longCalls.length).toBe(7); // stages 0-4, the attention ones per session (the head runs on the last row: short)
      expect(busy / span).toBeLessThanOrEqual(0.55);
    });

    it('fails only the fused step whose call fails', async () => {
      const { engine, sched } = make();
      engine.failRange = true;
      await expect(sched.submit('a', 0, 6, tensor(0), cache())).rejects.toThrow('bad range input');
      engine.failRange = false;
      expect((await sched.submit('a', 0, 6, tensor(0), cache())).tensor.shape).toEqual([1, 1, 2]);
      expect(sched.depth).toBe(0);
    });

    it('waits for a fused call in flight before a cancelled session is idle, and never resumes the step', async () => {
      const { engine, sched } = make();
      let open!: () => void;
      engine.gate = new Promise<void>((r) => {
        open = r;
      });
      const running = sched.submit('x', 0, 6, tensor(0), cache());
      await new Promise((r) => setImmediate(r));
      expect(engine.ranges).toHaveLength(1);
      const reason = new SessionClosedError('cancelled by the client');
      const gone = sched.cancelSession('x', reason);
      let idle = false;
      void gone.then(() => {
        idle = true;
      });
      await Promise.resolve();
      expect(idle).toBe(false);
      open();
      await expect(running).rejects.toBe(reason);
      await gone;
      expect(engine.calls).toHaveLength(0);
      expect(sched.depth).toBe(0);
    });
  });
});

describe('schedule: the decision alone, without an engine', () => {
  const KINDS = ['embed', 'attn', 'mlp', 'attn', 'mlp', 'head'] as const;
  const policy = { batching: true, maxBatch: 8 };
  const step = (stage: number, o: Partial<QueuedStep> = {}): QueuedStep => ({ begin: stage, stage, tokens: 1, lastRanAtMs: 0, fusable: false, ...o });

  it('serves the shallowest stage, batching the steps there when it is position-wise', () => {
    const q = [step(4), step(2, { begin: 0 }), step(2, { begin: 1 }), step(3)];
    expect(schedule(q, 0, KINDS, policy)).toEqual({ steps: [q[1], q[2]], stage: 2, fused: false });
    const attn = [step(1), step(1)];
    expect(schedule(attn, 0, KINDS, policy).steps).toEqual([attn[0]]);
    expect(schedule(q.slice(1, 3), 0, KINDS, { ...policy, batching: false }).steps).toEqual([q[1]]);
  });

  it('lets a step that waited maxWaitMs (200 ms by default) head the call, whatever its depth', () => {
    const q = [step(0, { lastRanAtMs: 100 }), step(4)];
    expect(schedule(q, 199, KINDS, policy).steps).toEqual([q[0]]);
    expect(schedule(q, 200, KINDS, policy).steps).toEqual([q[1]]);
  });

  it('holds long steps back while short ones wait, until one has stalled maxStallMs', () => {
    const p = { ...policy, longStepTokens: 4, maxStallMs: 10 };
    const [long, short] = [step(0, { tokens: 8 }), step(2, { lastRanAtMs: 5 })];
    expect(schedule([long, short], 9, KINDS, p).steps).toEqual([short]);
    expect(schedule([long, short], 10, KINDS, p).steps).toEqual([long]);
  });

  it('gives long steps the engine again only once short ones have had it as long as the last long call took', () => {
    const p = { ...policy, longStepTokens: 4, maxStallMs: 10 };
    // Two prefills, each stalled since before the other's 16 ms call, and a decode step.
    const [a, b, short] = [step(0, { tokens: 8, lastRanAtMs: 0 }), step(1, { tokens: 8, lastRanAtMs: 20 }), step(2, { lastRanAtMs: 30 })];
    const lastLong = { endedAtMs: 36, ms: 16 };
    // Without the last long call, a stalled prefill takes the next call; with it, the decode step does until 16 ms have passed.
    expect(schedule([a, b, short], 46, KINDS, p).steps).toEqual([a]);
    expect(schedule([a, b, short], 46, KINDS, p, lastLong).steps).toEqual([short]);
    expect(schedule([a, b, short], 51, KINDS, p, lastLong).steps).toEqual([short]);
    expect(schedule([a, b, short], 52, KINDS, p, lastLong).steps).toEqual([a]);
    // A short last long call: maxStallMs still applies.
    expect(schedule([a, b, short], 44, KINDS, p, { endedAtMs: 36, ms: 2 }).steps).toEqual([short]);
    expect(schedule([a, b, short], 46, KINDS, p, { endedAtMs: 36, ms: 2 }).steps).toEqual([a]);
    // With no short step waiting, long steps run whatever the last call.
    expect(schedule([a, b], 37, KINDS, p, lastLong).steps).toEqual([a]);
  });

  it('fills a batch within maxBatch and maxBatchTokens, the head first', () => {
    const q = [2, 5, 2, 1].map((tokens) => step(2, { tokens }));
    expect(schedule(q, 0, KINDS, { ...policy, maxBatchTokens: 5 }).steps).toEqual([q[0], q[2], q[3]]);
    expect(schedule(q, 0, KINDS, { ...policy, maxBatch: 2 }).steps).toEqual([q[0], q[1]]);
  });

  it('runs one-token fusable steps over the same range as one decode round when only they wait (rounds on)', () => {
    const rounds = { ...policy, rounds: true };
    const dec = (o: Partial<QueuedStep> = {}): QueuedStep => step(0, { fusable: true, end: 6, ...o });
    const [a, b, c] = [dec(), dec(), dec()];
    expect(schedule([a, b, c], 0, KINDS, rounds)).toEqual({ steps: [a, b, c], stage: 0, fused: true });
    expect(schedule([a, b, c], 0, KINDS, { ...rounds, maxBatch: 2 })).toEqual({ steps: [a, b], stage: 0, fused: true });
    // Off by default, and with batching off (one fused call each).
    expect(schedule([a, b], 0, KINDS, policy)).toEqual({ steps: [a, b], stage: 0, fused: false });
    expect(schedule([a, b], 0, KINDS, { ...rounds, batching: false })).toEqual({ steps: [a], stage: 0, fused: true });
    // Not beside a prompt, a step that may not fuse, another range, or a step under way.
    for (const other of [dec({ tokens: 5 }), step(0, { end: 6 }), dec({ end: 5 }), step(3, { begin: 1, end: 6 })])
      expect(schedule([a, b, other], 0, KINDS, rounds).steps.length === 3 && schedule([a, b, other], 0, KINDS, rounds).fused).toBe(false);
  });

  it('fuses a fusable step that has not started, is not long and would run alone', () => {
    const [lone, other] = [step(0, { fusable: true }), step(0)];
    expect(schedule([lone], 0, KINDS, policy)).toEqual({ steps: [lone], stage: 0, fused: true });
    expect(schedule([lone, other], 0, KINDS, policy)).toEqual({ steps: [lone, other], stage: 0, fused: false });
    expect(schedule([lone, other], 0, KINDS, { ...policy, batching: false })).toEqual({ steps: [lone], stage: 0, fused: true });
    expect(schedule([step(2, { begin: 0, fusable: true })], 0, KINDS, policy).fused).toBe(false);
    // never past another step: one under way finishes first, batching on or off ...
    const underWay = step(3, { begin: 1 });
    expect(schedule([lone, underWay], 0, KINDS, policy)).toEqual({ steps: [underWay], stage: 3, fused: false });
    expect(schedule([lone, underWay], 0, KINDS, { ...policy, batching: false })).toEqual({ steps: [underWay], stage: 3, fused: false });
    // ... unless the waiting step has waited maxWaitMs: it runs, stage by stage
    expect(schedule([lone, { ...underWay, lastRanAtMs: 150 }], 200, KINDS, policy)).toEqual({ steps: [lone], stage: 0, fused: false });
    // ... and past one not yet started deeper it catches up stage by stage
    expect(schedule([lone, step(3)], 0, KINDS, policy)).toEqual({ steps: [lone], stage: 0, fused: false });
    expect(schedule([lone, step(3)], 0, KINDS, { ...policy, batching: false }).fused).toBe(false);
    expect(schedule([step(0, { fusable: true, tokens: 8 })], 0, KINDS, { ...policy, longStepTokens: 4 }).fused).toBe(false);
  });
});
