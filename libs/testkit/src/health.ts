import * as grpc from '@grpc/grpc-js';
import { HealthClient, type ServingStatus } from '@tandem/protocol';

/**
 * The status a gRPC Health Check of `service` (default '', the whole server) on `addr` answers,
 * over `credentials` (default insecure); the client is closed after the one call.
 */
export function healthStatus(addr: string, service = '', credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure()): Promise<ServingStatus> {
  const hc = new HealthClient(addr, credentials);
  return new Promise<ServingStatus>((resolve, reject) => hc.check({ service }, (err, r) => (err ? reject(err) : resolve(r.status)))).finally(() => hc.close());
}
