import type { Logger } from 'pino';
import { connectNats, publishQuietly, type NatsConnection } from './nats';
import type { NatsAuth } from './nats-auth';

export interface TelemetryPublisherOptions {
  readonly natsUrl: string;
  /** Credentials (docs/security.md (NATS)); undefined connects without. */
  readonly natsAuth?: NatsAuth;
  /** Connection name, for NATS monitoring. */
  readonly name: string;
  readonly subject: string;
  readonly intervalMs: number;
  /** The encoded message to publish, built fresh each time. */
  readonly payload: () => Uint8Array;
  readonly log: Logger;
}

/**
 * Publishes a service's telemetry over NATS every `intervalMs`, and once as soon as it is
 * connected. Connecting happens in the background and never holds up serving (NATS may come
 * later or go away; publishing is best-effort, the next interval sends fresh figures).
 */
export class TelemetryPublisher {
  private nc: NatsConnection | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly abort = new AbortController();

  constructor(private readonly opts: TelemetryPublisherOptions) {}

  start(): void {
    void connectNats(this.opts.natsUrl, this.opts.name, this.opts.log, { auth: this.opts.natsAuth, signal: this.abort.signal }).then(
      (nc) => {
        if (this.stopped) {
          void nc.close();
          return;
        }
        this.nc = nc;
        this.publishNow();
      },
      (err: unknown) => {
        if (!this.stopped) this.opts.log.error({ err: (err as Error).message }, 'NATS connection failed; telemetry off');
      },
    );
    this.timer = setInterval(() => this.publishNow(), this.opts.intervalMs);
    this.timer.unref();
  }

  /** Publishes one message now (when connected). */
  publishNow(): void {
    if (this.nc) publishQuietly(this.nc, this.opts.subject, this.opts.payload());
  }

  /**
   * Publishes one event message (not the periodic payload) on `subject` over the same
   * connection, best-effort like the rest: false when not connected (yet, or any more) or
   * when NATS refused it; the event is then lost, never queued.
   */
  publish(subject: string, payload: Uint8Array): boolean {
    return publishQuietly(this.nc, subject, payload);
  }

  /** Stops publishing and closes the connection. Idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.abort.abort();
    clearInterval(this.timer);
    const nc = this.nc;
    this.nc = undefined;
    if (nc) await nc.close().catch((err: unknown) => this.opts.log.warn({ err }, 'closing NATS failed'));
  }
}

/** Where and how often a service publishes its telemetry (NATS_URL, the NATS credentials, TELEMETRY_INTERVAL_MS). */
export interface TelemetrySettings {
  /** NATS URL for telemetry, or undefined for none. */
  readonly natsUrl?: string;
  /** NATS credentials (docs/security.md (NATS)); undefined connects without. */
  readonly natsAuth?: NatsAuth;
  readonly telemetryIntervalMs: number;
}

/** Starts publishing a service's telemetry as its `settings` say; undefined (nothing published) without a NATS URL. */
export function startTelemetry(
  settings: TelemetrySettings,
  what: Pick<TelemetryPublisherOptions, 'name' | 'subject' | 'payload' | 'log'>,
): TelemetryPublisher | undefined {
  if (!settings.natsUrl) return undefined;
  const publisher = new TelemetryPublisher({ ...what, natsUrl: settings.natsUrl, natsAuth: settings.natsAuth, intervalMs: settings.telemetryIntervalMs });
  publisher.start();
  return publisher;
}
