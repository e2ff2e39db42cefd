import { median, sleep } from '@tandem/util';
/** One direction of an emulated link. */
export interface LinkShape {
  readonly latencyMs: number;
  /** 0 means unlimited. */
  readonly bytesPerMs: number;
}

/**
 * EMULATION of a slower network on one machine: delays each transfer by latency +
 * bytes / throughput before it is sent (uplink) or after it arrives (downlink).
 */
export class LinkEmulator {
  constructor(
    readonly up: LinkShape,
    readonly down: LinkShape,
  ) {}
  get active(): boolean {
    return this.up.latencyMs > 0 || this.up.bytesPerMs > 0 || this.down.latencyMs > 0 || this.down.bytesPerMs > 0;
  }
  static delayMs(l: LinkShape, bytes: number): number {
    return l.latencyMs + LinkEmulator.bytesMs(l, bytes);
  }
  /** The time `bytes` take on the link beyond its latency (0 on an unlimited one). */
  private static bytesMs(l: LinkShape, bytes: number): number {
    return l.bytesPerMs > 0 ? bytes / l.bytesPerMs : 0;
  }
  uplink(bytes: number): Promise<void> {
    return sleep(LinkEmulator.delayMs(this.up, bytes));
  }
  /**
   * A message sent right behind others already on the uplink (a hand-over's kv_puts, whose
   * delay included the latency): only its own bytes' time, as it arrives that much after them.
   */
  uplinkBehind(bytes: number): Promise<void> {
    return sleep(LinkEmulator.bytesMs(this.up, bytes));
  }
  downlink(bytes: number): Promise<void> {
    return sleep(LinkEmulator.delayMs(this.down, bytes));
  }
}

/** Bytes a link probe uploads, then downloads (AGENT_LINK_PROBE_BYTES): 256 KiB, some 0.2 s on a 10 Mbit/s uplink, 2 ms on gigabit. */
export const DEFAULT_LINK_PROBE_BYTES = 256 * 1024;

/** The link as measured: what the agent publishes. */
export interface LinkEstimate {
  readonly up: { latencyMs: number; bytesPerMs: number };
  readonly down: { latencyMs: number; bytesPerMs: number };
}

/**
 * Estimates the link to the server from what the agent sees, robustly to a busy host:
 * one-way latency is half the smallest recent round trip of small calls, and throughput
 * per direction the largest recent one seen in session steps (round trip minus server time
 * and latency, split by bytes moved). Contention on the device only ever makes a transfer
 * look slower, so, as BBR does, the extremes over a window measure the link and the mean
 * would measure the host. Steps answered with a token move almost nothing down, so they
 * measure the uplink; steps answered with a hidden state then give the downlink.
 */
export class LinkEstimator {
  private readonly rtts: number[] = [];
  private readonly up: number[] = [];
  private readonly down: number[] = [];
  private readonly overheads: number[] = [];
  constructor(
    private readonly fallbackBytesPerMs = 1e6,
    private readonly window = 32,
  ) {}

  private push(xs: number[], v: number): void {
    xs.push(v);
    if (xs.length > this.window) xs.shift();
  }

  recordRtt(ms: number): void {
    this.push(this.rtts, ms);
  }

  get latencyMs(): number {
    return this.rtts.length ? Math.min(...this.rtts) / 2 : 0;
  }

  /** A step moved `upBytes` up and `downBytes` down in `netMs` of round trip outside the server. */
  recordTransfer(upBytes: number, downBytes: number, netMs: number): void {
    const transferMs = netMs - 2 * this.latencyMs;
    if (transferMs <= 0.05 || upBytes + downBytes < 16 * 1024) return; // too small to say anything
    if (downBytes * 50 < upBytes) this.push(this.up, upBytes / transferMs);
    else if (this.up.length > 0) {
      const downMs = transferMs - upBytes / Math.max(...this.up);
      if (downMs > 0.05) this.push(this.down, downBytes / downMs);
    }
  }

  /**
   * A split step moved `upBytes` up and `downBytes` down and spent `outsideMs` outside the
   * server's queue and service (its round trip, emulated link delays included, minus
   * StepResult.queue_ms and service_ms): what it took beyond the link's modelled time is one
   * sample of the step overhead (message handling on both hosts), never below 0.
   */
  recordStep(upBytes: number, downBytes: number, outsideMs: number): void {
    const { up, down } = this.estimate();
    const linkMs = up.latencyMs + upBytes / up.bytesPerMs + down.latencyMs + downBytes / down.bytesPerMs;
    if (Number.isFinite(outsideMs)) this.push(this.overheads, Math.max(0, outsideMs - linkMs));
  }

  /**
   * The time a step to the server takes beyond the link, the server's queue and its service:
   * the median of the recent steps' ({@link recordStep}), ms; undefined before the first. The
   * median, not the least (as for the link's own latency): the overhead is the hosts' time,
   * which every step pays, busy or not.
   */
  get stepOverheadMs(): number | undefined {
    return this.overheads.length === 0 ? undefined : median(this.overheads);
  }

  /** Whether any transfer has measured each direction's throughput (estimate() guesses until then). */
  measured(): { readonly up: boolean; readonly down: boolean } {
    return { up: this.up.length > 0, down: this.down.length > 0 };
  }

  estimate(): LinkEstimate {
    const lat = this.latencyMs;
    const up = this.up.length ? Math.max(...this.up) : this.fallbackBytesPerMs;
    const down = this.down.length ? Math.max(...this.down) : up;
    return { up: { latencyMs: lat, bytesPerMs: up }, down: { latencyMs: lat, bytesPerMs: down } };
  }
}
