import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import { isNatsAuthError, natsAuthRefused, natsConnectAuth, type NatsAuth } from './nats-auth';

export type { NatsConnection } from '@nats-io/transport-node';

export interface ConnectNatsOptions {
  /** Credentials (docs/security.md (NATS)); undefined connects without. */
  readonly auth?: NatsAuth;
  /** Aborting stops waiting for a first connection (the promise then rejects). */
  readonly signal?: AbortSignal;
}

/**
 * Connects to NATS and keeps reconnecting forever (every 250 ms): a service never dies
 * because NATS went away, and it resumes publishing and its subscriptions when NATS is back.
 * Resolves once connected for the first time, waiting for a server that is not up yet.
 * Permission violations (a publish or subscription the server's configuration does not
 * grant these credentials) are logged as errors naming the subject.
 * @throws ConfigError when the server refuses the credentials (they will not get better by waiting).
 */
export async function connectNats(url: string, name: string, log: Logger, opts: ConnectNatsOptions = {}): Promise<NatsConnection> {
  let nc: NatsConnection;
  for (;;) {
    opts.signal?.throwIfAborted();
    try {
      nc = await connect({ servers: url, name, maxReconnectAttempts: -1, reconnectTimeWait: 250, pingInterval: 5_000, ...natsConnectAuth(opts.auth) });
      break;
    } catch (err) {
      if (isNatsAuthError(err)) throw natsAuthRefused(url, opts.auth, err);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  log.info({ url, user: opts.auth?.kind === 'password' ? opts.auth.user : undefined }, 'connected to NATS');
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') log.warn({ url }, 'NATS disconnected; reconnecting');
      else if (s.type === 'reconnect') log.info({ url }, 'NATS reconnected');
      else if (s.type === 'error')
        log.error(
          { url, err: s.error.message },
          isNatsAuthError(s.error) ? 'NATS refused the credentials' : 'NATS error (a permission violation names the subject these credentials may not use)',
        );
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
