import type { ChannelOptions } from '@grpc/grpc-js';

/**
 * Channel/server options shared by every Tandem gRPC endpoint: message size limits
 * (hidden states of long prompts exceed grpc-js's 4 MiB default) and keepalive so a
 * vanished peer is noticed and its session freed. A client reconnects to a peer that went
 * away at least once a second (grpc-js backs off to 120 s by default, so a restarted
 * executor or planner would stay unreachable long after it is back; the agent resumes lost
 * generations only within their deadline).
 * @param maxMessageBytes largest message accepted or sent, bytes.
 */
export function channelOptions(maxMessageBytes: number): ChannelOptions {
  return {
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
    'grpc.keepalive_time_ms': 10_000,
    'grpc.keepalive_timeout_ms': 5_000,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.http2.min_ping_interval_without_data_ms': 5_000,
    'grpc.http2.min_time_between_pings_ms': 5_000,
    'grpc.initial_reconnect_backoff_ms': 250,
    'grpc.max_reconnect_backoff_ms': 1_000,
  };
}
