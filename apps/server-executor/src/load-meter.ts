import type { ServerLoad, StepQueueWaits } from '@tandem/protocol';
import { OverheadModel } from './overhead';
import type { StepOutcome } from './scheduler';
import type { TrafficCounters } from './split-session';

/** Kinds of step (stepKind), in the order of the per-kind sums (StepCounts). */
export const STEP_KINDS = 4;
/** Index of the whole-range decode step and of the split (partial-range) one. */
const WHOLE_DECODE = 0;
const SPLIT_DECODE = 3;

/**
 * The kind of a finished step, as an index of per-kind sums (StepCounts): 0 decode step (one
 * position) through every stage, 1 prompt, 2 long prompt, 3 decode step through some stages
 * only (a split's server range).
 */
export function stepKind(o: { readonly positions: number; readonly long: boolean; readonly whole: boolean }): number {
  return o.long ? 2 : o.positions > 1 ? 1 : o.whole ? WHOLE_DECODE : SPLIT_DECODE;
}

/**
 * The measured slow-down of steps on this executor: per kind of step (decode through every
 * stage, short prompt, long prompt, decode through some stages), Σ service time (first stage call's start to last one's end) over Σ nominal
 * time (the per-stage figures this executor publishes, for the step's stages and positions,
 * as they stood when it finished), over one telemetry interval, folded into an exponential
 * moving average across intervals. Since the figures are per-step shares of batched calls, a
 * decode step batched with B − 1 others is stretched about B times (it waits for the whole
 * call); a prompt in the same batch less (its share is larger); a long prompt held back
 * behind short steps more. The planner prices server latency as the published figures ×
 * stretch, so the product is what steps took (the executor's own measurement instead of a
 * queueing formula), whichever way the figures move. An interval without steps of a
 * kind moves its figure toward 1 (no load, no slow-down), except that one of the two decode
 * kinds moves toward the other's measure of the interval when there was one (a decode step
 * would have waited behind the same calls). 0 until the first measured interval.
 */
export class StretchMeter {
  private readonly value = new Array<number>(STEP_KINDS).fill(0);

  constructor(private readonly alpha = 0.3) {}

  /** Folds one interval into each kind's average: Σ service and Σ nominal time of its steps, per kind (stepKind). */
  interval(
    serviceMs: readonly number[],
    nominalMs: readonly number[],
  ): Pick<ServerLoad, 'decodeStretch' | 'promptStretch' | 'longPromptStretch' | 'splitDecodeStretch'> {
    const measured = Array.from({ length: STEP_KINDS }, (_, k) => (nominalMs[k] > 0 ? Math.max(1, serviceMs[k] / nominalMs[k]) : undefined));
    // A decode kind without steps moves toward the other decode kind's measure of the interval.
    const toward = (k: number): number => (k === WHOLE_DECODE ? measured[SPLIT_DECODE] : k === SPLIT_DECODE ? measured[WHOLE_DECODE] : undefined) ?? 1;
    for (let k = 0; k < STEP_KINDS; k++) {
      const m = measured[k];
      if (m !== undefined) this.value[k] = this.value[k] === 0 ? m : this.value[k] + this.alpha * (m - this.value[k]);
      else if (this.value[k] > 0) this.value[k] += this.alpha * (toward(k) - this.value[k]);
    }
    return { decodeStretch: this.value[0], promptStretch: this.value[1], longPromptStretch: this.value[2], splitDecodeStretch: this.value[3] };
  }
}

const sum = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);

/** The mean queue wait over all kinds, from per-kind Σ wait (ms) and counts; 0 without steps. */
function meanWait(queueMs: readonly number[], count: readonly number[]): number {
  const n = sum(count);
  return n > 0 ? sum(queueMs) / n : 0;
}

/**
 * The mean queue wait of each kind of step (ServerLoad.queue_waits): per kind, an exponential
 * moving average across intervals of the interval's mean wait of such steps. An interval without
 * steps of a kind moves its figure toward the interval's mean wait over all steps (what any step
 * waited), or toward 0 when no step ran. 0 until the first step.
 */
export class QueueWaitMeter {
  private readonly value = new Array<number>(STEP_KINDS).fill(0);
  private started = false;

  constructor(private readonly alpha = 0.3) {}

  /** Folds one interval: per kind (stepKind) Σ queue wait, ms, and the number of steps. */
  interval(queueMs: readonly number[], count: readonly number[]): StepQueueWaits {
    if (sum(count) > 0 || this.started) {
      const all = meanWait(queueMs, count);
      for (let k = 0; k < STEP_KINDS; k++) {
        const m = count[k] > 0 ? queueMs[k] / count[k] : all;
        this.value[k] = this.started ? this.value[k] + this.alpha * (m - this.value[k]) : m;
      }
      this.started = true;
    }
    return { decodeMs: this.value[0], promptMs: this.value[1], longPromptMs: this.value[2], splitDecodeMs: this.value[3] };
  }
}

/**
 * Steps finished, per kind (stepKind): how many, Σ queue wait, and Σ service and Σ nominal time
 * of those priced (nominal > 0), ms.
 */
export type StepCounts = {
  readonly kindCount: readonly number[];
  readonly kindQueueMs: readonly number[];
  readonly serviceMs: readonly number[];
  readonly nominalMs: readonly number[];
};

/** Counts finished steps (the scheduler's onStepDone); the counts only grow. */
export class StepTotals {
  private readonly c = {
    kindCount: new Array<number>(STEP_KINDS).fill(0),
    kindQueueMs: new Array<number>(STEP_KINDS).fill(0),
    serviceMs: new Array<number>(STEP_KINDS).fill(0),
    nominalMs: new Array<number>(STEP_KINDS).fill(0),
  };

  record(o: Pick<StepOutcome, 'queueMs' | 'serviceMs' | 'nominalMs' | 'positions' | 'long' | 'whole'>): void {
    const k = stepKind(o);
    this.c.kindCount[k]++;
    this.c.kindQueueMs[k] += o.queueMs;
    if (!(o.nominalMs > 0) || !(o.serviceMs >= 0)) return;
    this.c.serviceMs[k] += o.serviceMs;
    this.c.nominalMs[k] += o.nominalMs;
  }

  /** Steps finished, all kinds. */
  get count(): number {
    return sum(this.c.kindCount);
  }

  snapshot(): StepCounts {
    const c = this.c;
    return { kindCount: [...c.kindCount], kindQueueMs: [...c.kindQueueMs], serviceMs: [...c.serviceMs], nominalMs: [...c.nominalMs] };
  }
}

/**
 * What the executor has counted since it started serving, read at `atMs` (performance.now()):
 * engine busy time, the main thread's CPU (undefined where unknown), session traffic and steps.
 * Every figure only grows: reading changes nothing, and a reader takes differences (LoadMeter).
 */
export interface ExecutorCounters {
  readonly atMs: number;
  readonly busyMs: number;
  readonly cpuMs: number | undefined;
  readonly traffic: Readonly<TrafficCounters>;
  readonly steps: StepCounts;
}

/** The figures of ServerLoad that describe one interval. */
export type LoadInterval = Pick<
  ServerLoad,
  'utilisation' | 'meanQueueMs' | 'overhead' | 'decodeStretch' | 'promptStretch' | 'longPromptStretch' | 'splitDecodeStretch' | 'queueWaits'
>;

/**
 * Reads the executor's counters interval by interval: each `next` takes a snapshot and gives the
 * load of the interval since the previous one, feeding that interval to the overhead model (the
 * main thread's CPU besides stage compute against the session traffic), to the stretch and
 * queue-wait averages. It keeps the previous snapshot; the counters themselves are never reset.
 */
export class LoadMeter {
  private readonly stretch = new StretchMeter();
  private readonly waits = new QueueWaitMeter();
  private readonly overhead = new OverheadModel();

  /** @param computeOnMain stage compute runs on the main thread, so its busy time is in that thread's CPU (and not overhead). */
  constructor(
    private last: ExecutorCounters,
    private readonly computeOnMain: boolean,
  ) {}

  next(now: ExecutorCounters): LoadInterval {
    const last = this.last;
    this.last = now;
    const wallMs = Math.max(1, now.atMs - last.atMs);
    const busyMs = now.busyMs - last.busyMs;
    if (now.cpuMs !== undefined && last.cpuMs !== undefined) {
      const [t, p] = [now.traffic, last.traffic];
      const cpuMs = Math.max(0, now.cpuMs - last.cpuMs - (this.computeOnMain ? busyMs : 0));
      this.overhead.record({
        cpuMs,
        wallMs,
        messagesIn: t.messagesIn - p.messagesIn,
        bytesIn: t.bytesIn - p.bytesIn,
        messagesOut: t.messagesOut - p.messagesOut,
        bytesOut: t.bytesOut - p.bytesOut,
        kvBytesIn: t.kvBytesIn - p.kvBytesIn,
        kvBytesOut: t.kvBytesOut - p.kvBytesOut,
      });
    }
    const since = (a: readonly number[], b: readonly number[]): number[] => a.map((v, k) => v - b[k]);
    const queueMs = since(now.steps.kindQueueMs, last.steps.kindQueueMs);
    const count = since(now.steps.kindCount, last.steps.kindCount);
    return {
      utilisation: Math.min(1, Math.max(0, busyMs / wallMs)),
      meanQueueMs: meanWait(queueMs, count),
      overhead: this.overhead.fit(),
      ...this.stretch.interval(since(now.steps.serviceMs, last.steps.serviceMs), since(now.steps.nominalMs, last.steps.nominalMs)),
      queueWaits: this.waits.interval(queueMs, count),
    };
  }
}
