import * as grpc from '@grpc/grpc-js';
import { capStatus, decodeProblem, safeService } from '@tandem/protocol';
import { ConfigError } from './env';
import type { Logger } from './logger';

/**
 * Base of every error a Tandem service answers a call with: the gRPC status `code`, the
 * message (the status details, capped at 1 KiB where it is sent), an ES2022 `cause` (logged,
 * never sent) and `trailers`, trailer metadata such as `retry-after-ms`.
 */
export class StatusError extends Error {
  override name = 'StatusError';
  readonly trailers: Readonly<Record<string, string>>;
  constructor(
    readonly code: grpc.status,
    message: string,
    options: { cause?: unknown; trailers?: Readonly<Record<string, string>> } = {},
  ) {
    super(message, 'cause' in options ? { cause: options.cause } : undefined);
    this.trailers = options.trailers ?? {};
  }
}

/** A request broke a rule of the protocol or the service: INVALID_ARGUMENT. The message names the field, the rule and the value. */
export class ValidationError extends StatusError {
  override name = 'ValidationError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(grpc.status.INVALID_ARGUMENT, message, options);
  }
}

/** A status as a handler answers it (the callback's or `call.emit('error')`'s argument). */
export interface GrpcStatus {
  readonly code: grpc.status;
  readonly details: string;
  readonly metadata: grpc.Metadata;
}

/**
 * The status `err` answers a call with: `known(err)` (a service's own map, e.g. of another
 * library's errors, which know nothing of gRPC), else a StatusError's own; anything else is
 * INTERNAL with a generic message naming `service` (the caller never sees an internal message).
 */
export function statusOf(err: unknown, service: string, known: (err: unknown) => StatusError | undefined = () => undefined): GrpcStatus {
  const e = known(err) ?? (err instanceof StatusError ? err : undefined);
  const metadata = new grpc.Metadata();
  if (!e) return { code: grpc.status.INTERNAL, details: `internal error in the ${service} (logged)`, metadata };
  for (const [k, v] of Object.entries(e.trailers)) metadata.set(k, v);
  return { code: e.code, details: capStatus(e.message), metadata };
}

/** The one place a service turns errors into statuses: its status map, and INTERNAL logged at error with the error and its cause. */
export type ErrorEdge = (err: unknown, logFields?: Record<string, unknown>) => GrpcStatus;

/** The edge of a service whose status map is `map` (see {@link statusOf}). */
export function errorEdge(log: Logger, map: (err: unknown) => GrpcStatus): ErrorEdge {
  return (err, logFields = {}) => {
    const st = map(err);
    if (st.code === grpc.status.INTERNAL) log.error({ ...logFields, err }, 'internal error; the caller was answered INTERNAL');
    return st;
  };
}

/** A handler as serveWithEdge takes it: grpc-js's own type, which may also return a promise (its rejection is answered like a throw). */
type MayReturnPromise<F> = F extends (...args: infer A) => void ? (...args: A) => void | Promise<void> : F;

/** A service's handlers as serveWithEdge takes them, e.g. `EdgeHandlers<AgentServiceServer>`: each may be an async function. */
export type EdgeHandlers<S> = { [K in keyof S]: MayReturnPromise<S[K]> };

type AnyHandler = (
  call: { request?: unknown; cancelled?: boolean; emit(event: 'error', st: GrpcStatus): boolean },
  cb?: (err: GrpcStatus | null) => void,
) => unknown;

/**
 * Adds `service` to `server` with every handler behind `edge`: a request that did not decode
 * (safeService, decodeProblem) is answered INVALID_ARGUMENT before its handler runs; a
 * handler's throw, rejected promise or callback error is answered with `edge(err)` (a stream
 * whose caller has gone is left alone). Server interceptors of grpc-js 1.14 could not do
 * this: they see statuses, not the errors (a handler's throw is already UNKNOWN 'Unknown
 * error' there), so neither the class nor the cause would reach the map or the log.
 */
export function serveWithEdge<S extends grpc.ServiceDefinition, H extends EdgeHandlers<grpc.UntypedServiceImplementation>>(
  server: grpc.Server,
  service: S,
  handlers: H,
  edge: ErrorEdge,
): void {
  const wrapped: Record<string, AnyHandler> = {};
  for (const [name, handler] of Object.entries(handlers) as [string, AnyHandler][]) {
    const unary = !service[name].requestStream && !service[name].responseStream;
    wrapped[name] = (call, cb) => {
      const fail = (err: unknown): void => {
        if (unary && cb)
          cb(edge(err)); // grpc-js passes every unary handler its callback
        else if (!call.cancelled) call.emit('error', edge(err));
      };
      const problem = decodeProblem(call.request);
      if (problem) {
        fail(new ValidationError(problem.message));
        return;
      }
      try {
        const done = handler(call, unary ? (err, ...rest: unknown[]) => (err ? fail(err) : (cb as (...a: unknown[]) => void)(null, ...rest)) : undefined);
        if (done instanceof Promise) done.catch(fail);
      } catch (err) {
        fail(err);
      }
    };
  }
  server.addService(safeService(service), wrapped as unknown as grpc.UntypedServiceImplementation);
}

/**
 * Runs a service's `main`: a failure prints `<service>: <message>` on stderr and exits 2 when
 * it is bad configuration (a ConfigError: environment, certificates, tokens, NATS credentials;
 * or an instance of one of `badConfig`, e.g. a model directory that does not hold a model), 1
 * otherwise. The same exit codes for every service.
 */
export function runMain(service: string, main: () => Promise<void>, badConfig: readonly (abstract new (...args: never[]) => Error)[] = []): void {
  main().catch((err: unknown) => {
    process.stderr.write(`${service}: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit([ConfigError, ...badConfig].some((c) => err instanceof c) ? 2 : 1);
  });
}
