import { status, type StatusObject, Metadata } from '@grpc/grpc-js';
import { capStatus, RETRY_AFTER_KEY, TensorFormatError } from '@tandem/protocol';
import { StageInputError } from '@tandem/model';
import { AuthError } from '@tandem/service-kit';

/** A request broke a rule of the protocol: INVALID_ARGUMENT. */
export class ValidationError extends Error {
  override name = 'ValidationError';
}
/** A well-formed request that does not fit the session's state: FAILED_PRECONDITION. */
export class PreconditionError extends Error {
  override name = 'PreconditionError';
}
/** A configured limit was reached: RESOURCE_EXHAUSTED, with a retry hint (trailer `retry-after-ms`) when one is known. */
export class CapacityError extends Error {
  override name = 'CapacityError';
  constructor(message: string, readonly retryAfterMs?: number) {
    super(message);
  }
}
/** Not ready or draining: UNAVAILABLE. */
export class NotReadyError extends Error {
  override name = 'NotReadyError';
}
/** The inference engine can no longer run stages (its worker thread died): UNAVAILABLE. */
export class EngineUnavailableError extends NotReadyError {
  override name = 'EngineUnavailableError';
}
/** The session ended (cancelled, idle, shut down) before the work ran. */
export class SessionClosedError extends Error {
  override name = 'SessionClosedError';
  constructor(message: string, readonly code: status = status.CANCELLED) {
    super(message);
  }
}

/**
 * The one place that decides gRPC status codes for the executor's errors. Unknown errors become
 * INTERNAL. Every message is capped at 1 KiB (capStatus): echoed values are cut where they are
 * rendered, this is the guard.
 */
export function toGrpcStatus(err: unknown): Partial<StatusObject> & { code: status; details: string } {
  const m = (code: status, details: string) => ({ code, details: capStatus(details), metadata: new Metadata() });
  if (err instanceof ValidationError || err instanceof TensorFormatError) return m(status.INVALID_ARGUMENT, err.message);
  if (err instanceof StageInputError) return m(err.kind === 'precondition' ? status.FAILED_PRECONDITION : status.INVALID_ARGUMENT, err.message);
  if (err instanceof PreconditionError) return m(status.FAILED_PRECONDITION, err.message);
  if (err instanceof CapacityError) {
    const st = m(status.RESOURCE_EXHAUSTED, err.message);
    if (err.retryAfterMs !== undefined) st.metadata.set(RETRY_AFTER_KEY, String(Math.ceil(err.retryAfterMs)));
    return st;
  }
  if (err instanceof NotReadyError) return m(status.UNAVAILABLE, err.message);
  if (err instanceof SessionClosedError) return m(err.code, err.message);
  if (err instanceof AuthError) return m(err.code, err.message);
  return m(status.INTERNAL, 'internal error in the executor (logged)');
}
