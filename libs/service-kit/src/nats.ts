import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from 'pino';

export type { NatsConnection } from '@nats-io/transport-node';

/**
 * Connects to NATS and keeps reconnecting forever (every 250 ms): a service never dies
 * because NATS went away, and it resumes publishing and its subscriptions when NATS is back.
 * Resolves once connected for the first time, waiting for a server that is not up yet.
 */
export async function connectNats(url: string, name: string, log: Logger): Promise<NatsConnection> {
  const nc = await connect({ servers: url, name, maxReconnectAttempts: -1, reconnectTimeWait: 250, waitOnFirstConnect: true, pingInterval: 5_000 });
  log.info({ url }, 'connected to NATS');
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') log.warn({ url }, 'NATS disconnected; reconnecting');
      else if (s.type === 'reconnect') log.info({ url }, 'NATS reconnected');
    }
  })();
  return nc;
}

/** Publishes without throwing while NATS is away: telemetry is best-effort, and the next interval sends fresh figures. */
export function publishQuietly(nc: NatsConnection | undefined, subject: string, payload: Uint8Array): boolean {
  if (!nc || nc.isClosed()) return false;
  try {
    nc.publish(subject, payload);
    return true;
  } catch {
    return false;
  }
}
