import { readFileSync } from 'node:fs';

/** Traffic and CPU of the executor over one telemetry interval. */
export interface OverheadSample {
  /** CPU the executor spent besides stage compute (gRPC, protobuf, copies, scheduling, timers), ms. */
  readonly cpuMs: number;
  /** Wall time of the interval, ms. */
  readonly wallMs: number;
  /** Session messages received (steps, generates). */
  readonly messagesIn: number;
  /** Session messages sent (step results, streamed tokens). */
  readonly messagesOut: number;
  /** Tensor bytes received in those messages. */
  readonly bytesIn: number;
  /** Tensor bytes sent in those messages. */
  readonly bytesOut: number;
  /** KV-cache bytes taken in by kv_put (not in `bytesIn`; default 0). */
  readonly kvBytesIn?: number;
  /** KV-cache bytes sent in kv_chunks (not in `bytesOut`; default 0). */
  readonly kvBytesOut?: number;
}

/** The fitted cost of serving, besides stage compute: what one hand-over costs the server. */
export interface OverheadFit {
  /** CPU per message received, ms. */
  readonly msPerMessageIn: number;
  /** CPU per message sent, ms. */
  readonly msPerMessageOut: number;
  /** CPU per KiB of tensor received, ms. */
  readonly msPerKibIn: number;
  /** CPU per KiB of tensor sent, ms. */
  readonly msPerKibOut: number;
  /** CPU spent regardless of traffic (timers, telemetry, GC), ms per second of wall time. */
  readonly idleMsPerS: number;
  /** CPU per KiB of KV cache taken in (kv_put), ms. */
  readonly msPerKvKibIn: number;
  /** CPU per KiB of KV cache sent (kv_chunk), ms. */
  readonly msPerKvKibOut: number;
  /** Intervals with traffic behind the fit (0: the prior alone). */
  readonly samples: number;
}

/**
 * What the fit starts from and is pulled toward while traffic is scarce. The KV figures are
 * tools/bench/kv-handover-bench.ts's (small preset, 512-token caches, every thread of the
 * executor: 23 µs per KiB in, 8.4 out), so a planner prices a hand-over before the executor
 * has seen one.
 */
export const OVERHEAD_PRIOR: Omit<OverheadFit, 'samples'> = {
  msPerMessageIn: 0.3,
  msPerMessageOut: 0.2,
  msPerKibIn: 0.002,
  msPerKibOut: 0.002,
  idleMsPerS: 2,
  msPerKvKibIn: 0.023,
  msPerKvKibOut: 0.0085,
};

const KEYS = ['msPerMessageIn', 'msPerMessageOut', 'msPerKibIn', 'msPerKibOut', 'idleMsPerS', 'msPerKvKibIn', 'msPerKvKibOut'] as const;

/**
 * The traffic of one typical busy interval, per feature (messages in, messages out, KiB in,
 * KiB out, seconds, KV KiB in, KV KiB out: one 512-token hand-over of the small preset): the prior weighs as `priorWeight` such intervals, whatever the window
 * holds, so a window of near-silent intervals (a few streamed tokens, a few hundred bytes)
 * cannot blow a coefficient up: its features are too small to outweigh the prior.
 */
const TYPICAL = [200, 200, 1000, 1000, 1, 6144, 6144];

/**
 * Upper bounds of a believable fit: a message costs the event loop well under 5 ms and a KiB
 * (decode, copy, encode) well under 0.05 ms, a KiB of KV cache (into fresh memory) under 0.2 ms;
 * anything above is a fit of noise.
 */
const CEILING = [5, 5, 0.05, 0.05, 200, 0.2, 0.2];

function features(s: OverheadSample): number[] {
  return [s.messagesIn, s.messagesOut, s.bytesIn / 1024, s.bytesOut / 1024, s.wallMs / 1000, (s.kvBytesIn ?? 0) / 1024, (s.kvBytesOut ?? 0) / 1024];
}

/** Solves the small dense system A x = b (Gaussian elimination with partial pivoting). A is overwritten. */
function solveLinear(a: number[][], b: number[]): number[] {
  const n = b.length;
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(a[r][c]) > Math.abs(a[p][c])) p = r;
    [a[c], a[p]] = [a[p], a[c]];
    [b[c], b[p]] = [b[p], b[c]];
    const d = a[c][c] || 1e-12;
    for (let r = c + 1; r < n; r++) {
      const f = a[r][c] / d;
      for (let k = c; k < n; k++) a[r][k] -= f * a[c][k];
      b[r] -= f * b[c];
    }
  }
  const x = new Array<number>(n).fill(0);
  for (let r = n - 1; r >= 0; r--) {
    let s = b[r];
    for (let k = r + 1; k < n; k++) s -= a[r][k] * x[k];
    x[r] = s / (a[r][r] || 1e-12);
  }
  return x;
}

/**
 * Fits cpuMs ≈ msPerMessageIn·in + msPerMessageOut·out + msPerKibIn·KiBin + msPerKibOut·KiBout
 * + idleMsPerS·seconds + msPerKvKibIn·KV KiB in + msPerKvKibOut·KV KiB out over the last `window` intervals: least squares, ridge-regularised
 * toward the prior (which weighs as `priorWeight` typical busy intervals, so a few intervals
 * move the fit little and hundreds decide it), with every coefficient ≥ 0 (a coefficient that
 * comes out negative is fixed at 0 and the rest refitted) and below a believable ceiling.
 * Pure; O(window).
 */
export class OverheadModel {
  private readonly samples: OverheadSample[] = [];

  constructor(
    private readonly window = 120,
    private readonly prior: Omit<OverheadFit, 'samples'> = OVERHEAD_PRIOR,
    private readonly priorWeight = 3,
  ) {}

  record(s: OverheadSample): void {
    if (!(s.wallMs > 0) || !Number.isFinite(s.cpuMs)) return;
    this.samples.push(s);
    if (this.samples.length > this.window) this.samples.shift();
  }

  fit(): OverheadFit {
    const busy = this.samples.filter((s) => s.messagesIn + s.messagesOut > 0).length;
    const n = KEYS.length;
    const rows = this.samples.map(features);
    const y = this.samples.map((s) => s.cpuMs);
    // Ridge toward the prior: λ_k = priorWeight × (typical value of feature k)², i.e. the prior
    // counts as `priorWeight` typical busy intervals.
    const scale = TYPICAL.map((t) => t * t);
    const prior = KEYS.map((k) => this.prior[k]);
    const fixedZero = new Set<number>();
    let x = prior;
    for (let attempt = 0; attempt <= n; attempt++) {
      const free = KEYS.map((_, k) => k).filter((k) => !fixedZero.has(k));
      const a = free.map(() => new Array<number>(free.length).fill(0));
      const b = new Array<number>(free.length).fill(0);
      for (let r = 0; r < rows.length; r++) {
        for (let i = 0; i < free.length; i++) {
          b[i] += rows[r][free[i]] * y[r];
          for (let j = 0; j < free.length; j++) a[i][j] += rows[r][free[i]] * rows[r][free[j]];
        }
      }
      free.forEach((k, i) => {
        const lambda = this.priorWeight * scale[k];
        a[i][i] += lambda;
        b[i] += lambda * prior[k];
      });
      const sol = solveLinear(a, b);
      x = KEYS.map((_, k) => (fixedZero.has(k) ? 0 : sol[free.indexOf(k)]));
      const negative = x.findIndex((v, k) => v < 0 && !fixedZero.has(k));
      if (negative < 0) break;
      fixedZero.add(negative);
    }
    const out = Object.fromEntries(KEYS.map((k, i) => [k, Math.min(CEILING[i], Math.max(0, x[i]))])) as Record<(typeof KEYS)[number], number>;
    return { ...out, samples: busy };
  }
}

/** Clock ticks per second of /proc's CPU times (USER_HZ; 100 on Linux). */
const CLK_TCK = 100;

/**
 * CPU time of this process's main (event-loop) thread, ms, from /proc/self/task/<pid>/stat;
 * undefined where /proc is not available. Stage compute on worker or onnxruntime threads is
 * not in it.
 */
export function mainThreadCpuMs(): number | undefined {
  try {
    const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces) start at ')'.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
  } catch {
    return undefined;
  }
}
