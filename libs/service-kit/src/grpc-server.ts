import { ServerCredentials, type Server } from '@grpc/grpc-js';

/** Binds `server` to host:port (port 0 picks a free one) without TLS; resolves with the bound port. */
export function bindInsecure(server: Server, address: string): Promise<number> {
  return new Promise<number>((resolve, reject) =>
    server.bindAsync(address, ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))),
  );
}

/** Shuts `server` down gracefully, forcing it after `forceAfterMs` (calls still open are cancelled). */
export function shutdownServer(server: Server, forceAfterMs = 2000): Promise<void> {
  return new Promise<void>((resolve) => {
    const force = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, forceAfterMs);
    server.tryShutdown(() => {
      clearTimeout(force);
      resolve();
    });
  });
}
