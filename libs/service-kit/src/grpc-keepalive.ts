import { DEFAULT_KEEPALIVE, type Keepalive } from '@tandem/protocol';
import { env } from './env';

/**
 * HTTP/2 keepalive of every gRPC connection a service serves or opens (see
 * `keepaliveOptions` in @tandem/protocol). Spread into a service's env schema.
 */
export const grpcKeepaliveEnv = {
  GRPC_KEEPALIVE_TIME_MS: env.int(
    'HTTP/2 keepalive of every gRPC connection this service serves or opens: a PING is sent this long after the last one was answered, by clients and servers alike (servers enforce no minimum: a client may ping more often than its server), ms',
    DEFAULT_KEEPALIVE.timeMs,
    100,
    86_400_000,
  ),
  GRPC_KEEPALIVE_TIMEOUT_MS: env.int(
    'A keepalive PING not answered within this drops the connection and ends its calls, so a peer gone without FIN or RST (a dead path) is noticed within GRPC_KEEPALIVE_TIME_MS + this: the executor frees its sessions (server-side generations included), the agent resumes its generations on a new connection, ms',
    DEFAULT_KEEPALIVE.timeoutMs,
    100,
    3_600_000,
  ),
};

/** The values of {@link grpcKeepaliveEnv} as a service's loaded configuration holds them. */
export interface GrpcKeepaliveValues {
  readonly GRPC_KEEPALIVE_TIME_MS: number;
  readonly GRPC_KEEPALIVE_TIMEOUT_MS: number;
}

/** The keepalive a service's configuration sets. */
export function keepaliveFrom(config: GrpcKeepaliveValues): Keepalive {
  return { timeMs: config.GRPC_KEEPALIVE_TIME_MS, timeoutMs: config.GRPC_KEEPALIVE_TIMEOUT_MS };
}
