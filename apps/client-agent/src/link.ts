/** One direction of an emulated link. */
export interface LinkShape {
  readonly latencyMs: number;
  /** 0 means unlimited. */
  readonly bytesPerMs: number;
}

const sleep = (ms: number): Promise<void> => (ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve());

/**
 * EMULATION of a slower network on one machine: delays each transfer by latency +
 * bytes / throughput before it is sent (uplink) or after it arrives (downlink).
 */
export class LinkEmulator {
  constructor(readonly up: LinkShape, readonly down: LinkShape) {}
  get active(): boolean { return this.up.latencyMs > 0 || this.up.bytesPerMs > 0 || this.down.latencyMs > 0 || this.down.bytesPerMs > 0; }
  static delayMs(l: LinkShape, bytes: number): number { return l.latencyMs + (l.bytesPerMs > 0 ? bytes / l.bytesPerMs : 0); }
  uplink(bytes: number): Promise<void> { return sleep(LinkEmulator.delayMs(this.up, bytes)); }
  downlink(bytes: number): Promise<void> { return sleep(LinkEmulator.delayMs(this.down, bytes)); }
}

/** The link as measured: what the agent publishes. */
export interface LinkEstimate {
  readonly up: { latencyMs: number; bytesPerMs: number };
  readonly down: { latencyMs: number; bytesPerMs: number };
}

/**
 * Estimates the link to the server from what the agent sees: one-way latency from the
 * round trip of small calls (half the smallest recent RTT), and throughput per direction
 * from session steps (round trip minus server time and latency, split by bytes moved).
 * Steps answered with a token move almost nothing down, so they measure the uplink;
 * steps answered with a hidden state then give the downlink.
 */
export class LinkEstimator {
  private rtts: number[] = [];
  private upBpm = 0;
  private downBpm = 0;
  constructor(private readonly fallbackBytesPerMs = 1e6, private readonly alpha = 0.3) {}

  recordRtt(ms: number): void {
    this.rtts.push(ms);
    if (this.rtts.length > 20) this.rtts.shift();
  }

  get latencyMs(): number { return this.rtts.length ? Math.min(...this.rtts) / 2 : 0; }

  /** A step moved `upBytes` up and `downBytes` down in `netMs` of round trip outside the server. */
  recordTransfer(upBytes: number, downBytes: number, netMs: number): void {
    const transferMs = netMs - 2 * this.latencyMs;
    if (transferMs <= 0.05 || upBytes + downBytes < 16 * 1024) return; // too small to say anything
    const ewma = (old: number, v: number): number => (old === 0 ? v : old + this.alpha * (v - old));
    if (downBytes * 50 < upBytes) this.upBpm = ewma(this.upBpm, upBytes / transferMs);
    else if (this.upBpm > 0) {
      const downMs = transferMs - upBytes / this.upBpm;
      if (downMs > 0.05) this.downBpm = ewma(this.downBpm, downBytes / downMs);
    }
  }

  estimate(): LinkEstimate {
    const lat = this.latencyMs;
    return {
      up: { latencyMs: lat, bytesPerMs: this.upBpm || this.fallbackBytesPerMs },
      down: { latencyMs: lat, bytesPerMs: this.downBpm || this.upBpm || this.fallbackBytesPerMs },
    };
  }
}
