import type { ChannelOptions } from '@grpc/grpc-js';

/** HTTP/2 keepalive of a gRPC connection (GRPC_KEEPALIVE_TIME_MS, GRPC_KEEPALIVE_TIMEOUT_MS). */
export interface Keepalive {
  /** A PING is sent on the connection this long after the last one was answered, ms. */
  readonly timeMs: number;
  /** A PING not answered within this is a dead peer: the connection is dropped and its calls end, ms. */
  readonly timeoutMs: number;
}

/** Keepalive of every Tandem endpoint unless configured: a dead peer is noticed within 15 s. */
export const DEFAULT_KEEPALIVE: Keepalive = Object.freeze({ timeMs: 10_000, timeoutMs: 5_000 });

/**
 * Keepalive options of a gRPC client or server (grpc-js pings from both sides). A client pings
 * while it has no calls too, so a connection that died while idle is replaced before the next
 * call is sent on it. A server drops a client that stops answering: its calls are cancelled
 * (the executor frees their sessions, also a server-side generation whose writes still
 * succeed into buffers). grpc-js servers enforce no ping policy (the C-core options
 * `grpc.http2.min_ping_interval_without_data_ms` and `grpc.http2.min_time_between_pings_ms`
 * are not read by grpc-js, and it never answers pings with GOAWAY `too_many_pings`), so a
 * client's keepalive may be shorter than its server's without being refused.
 */
export function keepaliveOptions(k: Keepalive = DEFAULT_KEEPALIVE): ChannelOptions {
  return {
    'grpc.keepalive_time_ms': k.timeMs,
    'grpc.keepalive_timeout_ms': k.timeoutMs,
    'grpc.keepalive_permit_without_calls': 1,
  };
}

/**
 * Channel/server options shared by every Tandem gRPC endpoint: message size limits
 * (hidden states of long prompts exceed grpc-js's 4 MiB default) and keepalive so a
 * vanished peer is noticed and its session freed (see {@link keepaliveOptions}). A client
 * reconnects to a peer that went away at least once a second (grpc-js backs off to 120 s by
 * default, so a restarted executor or planner would stay unreachable long after it is back;
 * the agent resumes lost generations only within their deadline).
 * @param maxMessageBytes largest message accepted or sent, bytes.
 * @param keepalive the service's GRPC_KEEPALIVE_TIME_MS / GRPC_KEEPALIVE_TIMEOUT_MS (default {@link DEFAULT_KEEPALIVE}).
 */
export function channelOptions(maxMessageBytes: number, keepalive: Keepalive = DEFAULT_KEEPALIVE): ChannelOptions {
  return {
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
    ...keepaliveOptions(keepalive),
    'grpc.initial_reconnect_backoff_ms': 250,
    'grpc.max_reconnect_backoff_ms': 1_000,
  };
}
