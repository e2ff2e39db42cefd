import type { Server, ServerUnaryCall, ServerWritableStream, sendUnaryData } from '@grpc/grpc-js';
import { HealthCheckRequest, HealthCheckResponse, HealthCheckResponse_ServingStatus as ServingStatus, HealthService } from './generated/grpc/health/v1/health';

// Why not the npm package grpc-health-check (2.1.0, checked against @grpc/grpc-js 1.14.7):
// its HealthImplementation does Check, Watch and per-service setStatus, and runs on our
// servers with their credentials and interceptors, but it cannot end its Watch streams: it
// drops a watcher only on 'cancelled' and exposes no call. A watcher still open at stop()
// holds tryShutdown until shutdownServer forces it (measured: 2008 ms instead of 3 ms, and the
// watcher sees CANCELLED instead of a clean end). Reaching the calls means wrapping
// addService around the package, and it adds a second proto toolchain at run time
// (@grpc/proto-loader 0.7 parsing health.proto when imported, string enums instead of ours).
// `closeWatchers` below is what it lacks; the test in libs/protocol/test/grpc.spec.ts holds it.

/**
 * The standard grpc.health.v1 service. A service name's status is set with `set`; the
 * empty name ("") is the server as a whole. Watchers get every change and are removed
 * when they cancel.
 */
export class HealthReporter {
  private readonly statuses = new Map<string, ServingStatus>();
  private readonly watchers = new Map<string, Set<ServerWritableStream<HealthCheckRequest, HealthCheckResponse>>>();

  constructor(initial: ServingStatus = ServingStatus.NOT_SERVING) {
    this.statuses.set('', initial);
  }

  /** Sets a service's status and notifies its watchers. */
  set(service: string, status: ServingStatus): void {
    this.statuses.set(service, status);
    for (const w of this.watchers.get(service) ?? []) w.write({ status });
  }

  /** The status of a service, or undefined when unknown. */
  get(service = ''): ServingStatus | undefined {
    return this.statuses.get(service);
  }

  /** Registers the health service on a grpc-js server. */
  addTo(server: Server): void {
    server.addService(HealthService, {
      check: (call: ServerUnaryCall<HealthCheckRequest, HealthCheckResponse>, cb: sendUnaryData<HealthCheckResponse>) => {
        const status = this.statuses.get(call.request.service);
        if (status === undefined) {
          cb({ code: 5 /* NOT_FOUND */, details: `service '${call.request.service}' is unknown` });
          return;
        }
        cb(null, { status });
      },
      watch: (call: ServerWritableStream<HealthCheckRequest, HealthCheckResponse>) => {
        const name = call.request.service;
        call.write({ status: this.statuses.get(name) ?? ServingStatus.SERVICE_UNKNOWN });
        let set = this.watchers.get(name);
        if (!set) this.watchers.set(name, (set = new Set()));
        set.add(call);
        const remove = (): void => {
          set?.delete(call);
        };
        call.on('cancelled', remove);
        call.on('close', remove);
      },
    });
  }

  /** Ends every watch stream (on shutdown). */
  closeWatchers(): void {
    for (const set of this.watchers.values()) for (const w of set) w.end();
    this.watchers.clear();
  }
}
