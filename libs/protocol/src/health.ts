import type { Server, ServerUnaryCall, ServerWritableStream, sendUnaryData } from '@grpc/grpc-js';
import {
  HealthCheckRequest,
  HealthCheckResponse,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthService,
} from './generated/grpc/health/v1/health';

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
        const remove = (): void => { set?.delete(call); };
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
