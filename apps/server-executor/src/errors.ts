import { status } from '@grpc/grpc-js';
import { RETRY_AFTER_KEY, TensorFormatError } from '@tandem/protocol';
import { StageInputError } from '@tandem/model';
import { type GrpcStatus, statusOf, StatusError } from '@tandem/service-kit';

/** A well-formed request that does not fit the session's state: FAILED_PRECONDITION. */
export class PreconditionError extends StatusError {
  override name = 'PreconditionError';
  constructor(message: string) {
    super(status.FAILED_PRECONDITION, message);
  }
}
/** A model name or version the executor does not serve (Open Inference Protocol): NOT_FOUND. */
export class ModelNotFoundError extends StatusError {
  override name = 'ModelNotFoundError';
  constructor(message: string) {
    super(status.NOT_FOUND, message);
  }
}
/** A configured limit was reached: RESOURCE_EXHAUSTED, with a retry hint (trailer `retry-after-ms`) when one is known. */
export class CapacityError extends StatusError {
  override name = 'CapacityError';
  constructor(
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(status.RESOURCE_EXHAUSTED, message, { trailers: retryAfterMs === undefined ? {} : { [RETRY_AFTER_KEY]: String(Math.ceil(retryAfterMs)) } });
  }
}
/** Not ready or draining: UNAVAILABLE. */
export class NotReadyError extends StatusError {
  override name = 'NotReadyError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(status.UNAVAILABLE, message, options);
  }
}
/** The inference engine can no longer run stages (its worker thread died): UNAVAILABLE. */
export class EngineUnavailableError extends NotReadyError {
  override name = 'EngineUnavailableError';
}
/** The session ended (cancelled, idle, shut down) before the work ran: its `code`, CANCELLED by default. */
export class SessionClosedError extends StatusError {
  override name = 'SessionClosedError';
  constructor(message: string, code: status = status.CANCELLED) {
    super(code, message);
  }
}

/**
 * The executor's status map, the one place that decides its gRPC statuses: its own errors
 * (StatusError: ValidationError, the classes above, AuthError) carry theirs; a tensor or stage
 * input the model libraries refuse is the caller's fault; anything else is INTERNAL with a
 * generic message. Every message is capped at 1 KiB (capStatus): echoed values are cut where
 * they are rendered, this is the guard.
 */
export function toGrpcStatus(err: unknown): GrpcStatus {
  return statusOf(err, 'executor', (e) => {
    if (e instanceof TensorFormatError) return new StatusError(status.INVALID_ARGUMENT, e.message, { cause: e });
    if (e instanceof StageInputError)
      return new StatusError(e.kind === 'precondition' ? status.FAILED_PRECONDITION : status.INVALID_ARGUMENT, e.message, { cause: e });
    return undefined;
  });
}
