import type { HostTensor, StageTiming } from '@tandem/protocol';
import { StageInputError, StageRunner, StageStats, type KvCache, type StageState } from '@tandem/model';
import { sleep } from '@tandem/util';
import { ReplayMissError, type ReplayCursor, type ReplayRecording } from './replay';

/** A stage's uncontended cost on this host, measured at start-up. */
type Baseline = Pick<StageTiming, 'prefillMsPerToken' | 'decodeMs'>;

/** A stage not run for this long reports its start-up cost again (its last figures may be from a busy moment). */
const STALE_MS = 10_000;

/**
 * The stages this device runs, on the shared StageRunner, with their measured costs
 * (EWMA; prefill per token and one decode step).
 *
 * EMULATION (one-machine tests and benchmarks): with `slowdown` > 1 each stage is padded to
 * slowdown × its *uncontended* cost on this host, measured by `profile()` at start-up, so an
 * emulated device behaves like a dedicated slower device whatever else shares the host's
 * CPU (padding the contended wall time instead would multiply every wait for the CPU).
 * Before the profile exists, a stage is padded to slowdown × its wall time.
 *
 * EMULATION with a recording (`replay`, AGENT_REPLAY_FILE): no stage is computed. Each run
 * returns the recorded output for the generation's token history (the head: its token; see replay.ts; a history
 * not in the recording throws ReplayMissError) and sleeps the modelled cost, the recorded
 * uncontended cost × `slowdown`, which is also exactly the profile published. Consecutive
 * local stages are timed back to back from the previous stage's intended end, so timer
 * overshoot does not accumulate. A generation is tied to its recording cursor by
 * {@link armReplay} just before it creates its cache.
 */
export class LocalStages {
  /** The costs measured (EWMA), or the start-up profile × slowdown until a stage runs. */
  private readonly stats: StageStats;
  private readonly lastRunMs = new Map<number, number>();
  private baseline: Map<number, Baseline> | undefined;
  /** Emulated padding owed per generation but not slept yet, ms (timers cannot sleep a fraction of a ms). */
  private readonly paddingDebtMs = new WeakMap<KvCache, number>();

  /** Replay: the cursor of each generation's cache, the cursor armed for the next cache, and each cache's last stage times. */
  private readonly cursors = new WeakMap<KvCache, ReplayCursor>();
  private armed: ReplayCursor | undefined;
  private readonly chain = new WeakMap<KvCache, { stage: number; intendedEnd: number; actualEnd: number }>();

  private constructor(
    readonly runner: StageRunner,
    readonly slowdown: number,
    readonly replay: ReplayRecording | undefined,
  ) {
    this.stats = new StageStats(runner.manifest.stages.length);
  }

  static async load(
    modelDir: string,
    stages: readonly number[],
    opts: { slowdown: number; intraOpNumThreads?: number; replay?: ReplayRecording },
  ): Promise<LocalStages> {
    const runner = await StageRunner.load(modelDir, { stages, intraOpNumThreads: opts.intraOpNumThreads || undefined });
    return new LocalStages(runner, opts.slowdown, opts.replay);
  }

  get stages(): ReadonlySet<number> {
    return this.runner.stages;
  }
  has(stage: number): boolean {
    return this.runner.stages.has(stage);
  }

  /** A cache for one generation; with replay it carries the cursor armed by {@link armReplay}. */
  newCache(): KvCache {
    const cache = this.runner.newCache();
    if (this.armed) {
      this.cursors.set(cache, this.armed);
      this.armed = undefined;
    }
    return cache;
  }

  /**
   * Replay only: ties the next cache created (the next generation's) to a cursor over
   * `promptIds`, and returns the cursor (the caller advances it with each token). Must be
   * followed synchronously by the generation's newCache(); undefined without a recording.
   */
  armReplay(promptIds: readonly number[]): ReplayCursor | undefined {
    this.armed = this.replay?.cursor(promptIds);
    return this.armed;
  }

  /** Drops an armed cursor no cache took (the generation failed before creating one). */
  disarm(): void {
    this.armed = undefined;
  }

  /**
   * Runs one stage; resolves with its output and the time it took (including emulated
   * padding). The output is a tensor, except a replayed head's: its greedy token.
   */
  async run(stage: number, input: HostTensor, cache: KvCache): Promise<{ output: HostTensor | number; ms: number }> {
    if (this.replay) return this.replayRun(stage, input, cache);
    const t0 = performance.now();
    const output = await this.runner.run(stage, input, cache);
    const real = performance.now() - t0;
    const tokens = input.shape[1] ?? 1;
    let ms = real;
    if (this.slowdown > 1) {
      const base = this.baseline?.get(stage);
      const uncontended = base ? (tokens > 1 ? base.prefillMsPerToken * tokens : base.decodeMs) : real;
      ms = Math.max(real, this.slowdown * uncontended);
      await this.pad(cache, ms - real);
    }
    this.stats.record(stage, tokens, ms);
    this.lastRunMs.set(stage, performance.now());
    return { output, ms };
  }

  /** Replays one stage: the recorded output, after sleeping its modelled cost. */
  private async replayRun(stage: number, input: HostTensor, cache: KvCache): Promise<{ output: HostTensor | number; ms: number }> {
    const t0 = performance.now();
    if (!this.has(stage)) throw new ReplayMissError(`stage ${stage} is not one this device may run`);
    const tokens = input.shape[1] ?? 1;
    const cursor = this.cursors.get(cache);
    if (!cursor) throw new ReplayMissError('replay miss: the generation has no recording cursor (armReplay was not called)');
    const output = cursor.output(stage, tokens);
    const base = this.baseline?.get(stage);
    if (!base) throw new ReplayMissError(`replay miss: no modelled cost for stage ${stage} (the recording's header lists none)`);
    const cost = this.slowdown * (tokens > 1 ? base.prefillMsPerToken * tokens : base.decodeMs);
    // Back to back with the previous local stage of this generation (the next stage in order,
    // or the first after the head, whose token the device made itself): nothing ran elsewhere
    // in between, so the stage starts at the previous one's intended end and a timer's
    // overshoot is not carried on. After a server hop a new chain starts.
    const prev = this.chain.get(cache);
    const chained = prev !== undefined && (stage === prev.stage + 1 || (stage === 0 && prev.stage === this.runner.manifest.stages.length - 1));
    const start = chained ? prev.intendedEnd : t0;
    const intendedEnd = start + cost;
    // Timers have ms resolution and count from the event loop's cached clock, so they can
    // fire a little early: sleep whole ms, rounded up, again while still early, and skip a
    // wait under 0.5 ms (a chain carries it on to its next stage).
    for (let wait = intendedEnd - performance.now(); wait >= 0.5; wait = intendedEnd - performance.now()) await sleep(Math.ceil(wait));
    const end = performance.now();
    this.chain.set(cache, { stage, intendedEnd, actualEnd: end });
    // The time since the previous stage's end when chained: a chain of stages then sums to its wall time.
    return { output, ms: end - (chained ? prev.actualEnd : t0) };
  }

  /**
   * Hands `stage`'s state over to the server between the phases of a phased plan (the stage
   * runs here in the prefill and on the server in the decode): its count `tokens` (what the
   * generation ran through it), and for an attention stage its keys and values. The cache then
   * holds nothing of the stage. With a recording the keys and values are the recorded ones after
   * the prefill (the only point a hand-over happens), so the server decodes the recorded tokens.
   * @throws ReplayMissError when the recording does not hold them; Error when the cache's count
   *   differs from `tokens` (the generation's bookkeeping is wrong).
   */
  exportState(stage: number, cache: KvCache, tokens: number): StageState {
    const kind = this.runner.manifest.stages[stage]?.kind;
    if (this.replay) {
      const cursor = this.cursors.get(cache);
      if (!cursor) throw new ReplayMissError('replay miss: the generation has no recording cursor (armReplay was not called)');
      if (cursor.heldTokens() !== tokens)
        throw new Error(`stage ${stage} holds ${cursor.heldTokens()} tokens of the recorded history, the generation counts ${tokens}`);
      return kind === 'attn' ? { tokens, ...cursor.prefillKv(stage) } : { tokens };
    }
    if (kind !== 'attn' && kind !== 'embed') return { tokens }; // an MLP or head stage keeps nothing but its count
    const state = this.runner.exportState(stage, cache);
    if (state.tokens !== tokens) throw new Error(`stage ${stage} holds ${state.tokens} tokens in the device's cache, the generation counts ${tokens}`);
    this.runner.dropState(stage, cache);
    return state;
  }

  /**
   * Takes `stage`'s state from the server between the phases of a phased plan (the stage ran on
   * the server in the prefill and runs here in the decode); the stage must hold nothing here
   * yet. With a recording nothing is computed, so only the count is checked against the
   * recorded history (the replayed decode needs the history alone).
   * @throws StageInputError (from the runner) for a state that does not fit the stage; Error
   *   when a replayed history's length differs from `state.tokens`.
   */
  importState(stage: number, cache: KvCache, state: StageState): void {
    if (this.replay) {
      const cursor = this.cursors.get(cache);
      if (!cursor) throw new ReplayMissError('replay miss: the generation has no recording cursor (armReplay was not called)');
      if (cursor.heldTokens() !== state.tokens)
        throw new Error(`the server handed over ${state.tokens} tokens of stage ${stage}, the recorded history has ${cursor.heldTokens()}`);
      return;
    }
    const kind = this.runner.manifest.stages[stage]?.kind;
    if (kind !== 'attn' && kind !== 'embed') {
      // An MLP or head stage keeps nothing but its count, which the generation keeps.
      if (state.key || state.value) throw new StageInputError('state.key', `be absent for stage ${stage} (${kind}), which keeps no keys or values`, 'a tensor');
      return;
    }
    const held = kind === 'embed' ? cache.embeddedTokens : cache.pastLength(stage);
    if (held !== 0)
      throw new StageInputError('stage', `hold no tokens on the device before its state is taken from the server (it holds ${held})`, stage, 'precondition');
    this.runner.appendState(stage, cache, state);
  }

  /**
   * Sleeps the emulated padding. Short paddings are owed and paid together once they reach
   * 4 ms, and what a sleep overshoots is credited, so a generation takes slowdown × its real
   * compute time within a few ms (a 1 ms-per-stage timer floor would otherwise inflate fast stages).
   */
  private async pad(cache: KvCache, ms: number): Promise<void> {
    const debt = (this.paddingDebtMs.get(cache) ?? 0) + ms;
    if (debt < 4) {
      this.paddingDebtMs.set(cache, debt);
      return;
    }
    const t0 = performance.now();
    await sleep(debt);
    this.paddingDebtMs.set(cache, debt - (performance.now() - t0));
  }

  /**
   * Measures every local stage: a prefill of `promptTokens` then `decodeSteps` decode
   * steps, repeated `rounds` times (the first round also pays onnxruntime's lazy start).
   */
  async profile(opts: { promptTokens: number; decodeSteps: number; rounds: number; nEmbd: number }): Promise<void> {
    if (this.replay) {
      // The recording's uncontended costs are the model the replay is timed to.
      this.setBaseline(
        new Map(
          this.replay.header.costs.filter((c) => this.has(c.stage)).map((c) => [c.stage, { prefillMsPerToken: c.prefillMsPerToken, decodeMs: c.decodeMs }]),
        ),
        1,
      );
      return;
    }
    const base = new Map<number, { prefillMsPerToken: number; decodeMs: number }>();
    for (let r = 0; r < opts.rounds; r++) {
      const cache = this.newCache();
      for (const [t, steps] of [
        [opts.promptTokens, 1],
        [1, opts.decodeSteps],
      ] as const) {
        for (let k = 0; k < steps; k++) {
          for (const s of [...this.stages].sort((a, b) => a - b)) {
            const input: HostTensor =
              s === 0
                ? { dtype: 'int64', shape: [1, t], data: new BigInt64Array(t).fill(1n) }
                : { dtype: 'float32', shape: [1, t, opts.nEmbd], data: new Float32Array(t * opts.nEmbd).fill(0.01) };
            const t0 = performance.now();
            await this.runner.run(s, input, cache);
            const real = performance.now() - t0;
            // The last round's figures are kept: the first pays onnxruntime's lazy start-up.
            const b = base.get(s) ?? { prefillMsPerToken: 0, decodeMs: 0 };
            if (t > 1) b.prefillMsPerToken = real / t;
            else b.decodeMs = k === 0 ? real : (b.decodeMs * k + real) / (k + 1);
            base.set(s, b);
          }
        }
      }
      cache.clear();
    }
    this.setBaseline(base, opts.rounds);
  }

  private setBaseline(base: Map<number, Baseline>, samples: number): void {
    this.baseline = base;
    for (const [s, b] of base) this.stats.set(s, b.prefillMsPerToken * this.slowdown, b.decodeMs * this.slowdown, samples);
  }

  /**
   * Costs as published: the EWMA of recent runs, or the start-up profile for a stage that has
   * not run for 10 s (figures from a busy moment must not keep the planner from using it).
   */
  costs(): StageTiming[] {
    const now = performance.now();
    const measured = this.stats.snapshot();
    return [...this.stages]
      .sort((a, b) => a - b)
      .map((stage) => {
        const base = this.baseline?.get(stage);
        // With replay the modelled cost is exactly what the device does: always publish it.
        const stale = base !== undefined && (this.replay !== undefined || now - (this.lastRunMs.get(stage) ?? 0) > STALE_MS);
        // The start-up profile is per token: the line fitted over recent runs does not describe it.
        return stale
          ? { stage, samples: measured[stage].samples, prefillMsPerToken: base.prefillMsPerToken * this.slowdown, decodeMs: base.decodeMs * this.slowdown }
          : measured[stage];
      });
  }

  close(): Promise<void> {
    return this.runner.close();
  }
}
