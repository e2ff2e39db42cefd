import { OverheadModel, type OverheadFit } from './overhead';
import type { StepOutcome } from './scheduler';
import type { TrafficCounters } from './split-session';
import { stepKind, StretchMeter, type Stretch } from './stage-stats';

/** The steps finished so far, as counted (StepTotals.snapshot). */
export interface StepCounts {
  readonly count: number;
  /** Σ time from submission until the first stage started, ms. */
  readonly queueMs: number;
  /** Per kind of step (stepKind): Σ service time and Σ nominal time of the steps priced (nominal time > 0), ms. */
  readonly serviceMs: readonly number[];
  readonly nominalMs: readonly number[];
}

/** Counts finished steps (the scheduler's onStepDone); the counts only grow. */
export class StepTotals {
  private count = 0;
  private queueMs = 0;
  private readonly serviceMs = [0, 0, 0];
  private readonly nominalMs = [0, 0, 0];

  record(o: Pick<StepOutcome, 'queueMs' | 'serviceMs' | 'nominalMs' | 'positions' | 'long'>): void {
    this.count++;
    this.queueMs += o.queueMs;
    if (!(o.nominalMs > 0) || !(o.serviceMs >= 0)) return;
    const k = stepKind(o);
    this.serviceMs[k] += o.serviceMs;
    this.nominalMs[k] += o.nominalMs;
  }

  snapshot(): StepCounts {
    return { count: this.count, queueMs: this.queueMs, serviceMs: [...this.serviceMs], nominalMs: [...this.nominalMs] };
  }
}

/**
 * What the executor has counted since it started serving, read at one moment. Every figure only
 * grows: reading changes nothing, and a reader takes the differences between two snapshots.
 */
export interface ExecutorCounters {
  /** When read (performance.now()), ms. */
  readonly atMs: number;
  /** Engine busy time (StageScheduler.busyTimeMs), ms. */
  readonly busyMs: number;
  /** CPU time of the main thread (mainThreadCpuMs), ms; undefined where unknown. */
  readonly cpuMs: number | undefined;
  readonly traffic: Readonly<TrafficCounters>;
  readonly steps: StepCounts;
}

/** The load of one interval, as ServerLoad publishes it. */
export interface LoadInterval {
  /** Fraction of the interval the engine was busy, 0..1. */
  readonly utilisation: number;
  /** Mean time a step finished in the interval waited for its first stage, ms (0 without steps). */
  readonly meanQueueMs: number;
  readonly overhead: OverheadFit;
  readonly stretch: Stretch;
}

/**
 * Reads the executor's counters interval by interval: each call to `next` takes a snapshot and
 * gives the load of the interval since the previous one, feeding that interval to the overhead
 * model (the main thread's CPU besides stage compute against the session traffic) and to the
 * stretch averages. It keeps the previous snapshot; the counters themselves are never reset.
 */
export class LoadMeter {
  private readonly stretch = new StretchMeter();
  private readonly overhead = new OverheadModel();

  /** @param computeOnMain stage compute runs on the main thread, so its busy time is in that thread's CPU (and not overhead). */
  constructor(private last: ExecutorCounters, private readonly computeOnMain: boolean) {}

  next(now: ExecutorCounters): LoadInterval {
    const last = this.last;
    this.last = now;
    const wallMs = Math.max(1, now.atMs - last.atMs);
    const busyMs = now.busyMs - last.busyMs;
    if (now.cpuMs !== undefined && last.cpuMs !== undefined) {
      const [t, p] = [now.traffic, last.traffic];
      const cpuMs = Math.max(0, now.cpuMs - last.cpuMs - (this.computeOnMain ? busyMs : 0));
      this.overhead.record({ cpuMs, wallMs, messagesIn: t.messagesIn - p.messagesIn, bytesIn: t.bytesIn - p.bytesIn, messagesOut: t.messagesOut - p.messagesOut, bytesOut: t.bytesOut - p.bytesOut });
    }
    const steps = now.steps.count - last.steps.count;
    const since = (a: readonly number[], b: readonly number[]): number[] => a.map((v, k) => v - b[k]);
    return {
      utilisation: Math.min(1, Math.max(0, busyMs / wallMs)),
      meanQueueMs: steps > 0 ? (now.steps.queueMs - last.steps.queueMs) / steps : 0,
      overhead: this.overhead.fit(),
      stretch: this.stretch.interval(since(now.steps.serviceMs, last.steps.serviceMs), since(now.steps.nominalMs, last.steps.nominalMs)),
    };
  }
}
