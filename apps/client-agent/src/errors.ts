import { status } from '@grpc/grpc-js';
import { StageInputError } from '@tandem/model';
import { type GrpcStatus, statusOf, StatusError } from '@tandem/service-kit';
import { ReplayMissError } from './replay';

/**
 * A status that stands for the executor's (a refusal whose hint the deadline left no room to
 * wait out, a session lost and not resumed): the agent passes it on like the executor's own.
 * `details` is the message, as on a grpc-js ServiceError.
 */
export class ExecutorStatusError extends StatusError {
  override name = 'ExecutorStatusError';
  constructor(
    code: status,
    readonly details: string,
  ) {
    super(code, details);
  }
}

/** Executor statuses that are the caller's business (its input, a limit, availability, its deadline): passed on with the executor's message. */
const PASSED_ON: readonly status[] = [
  status.INVALID_ARGUMENT,
  status.OUT_OF_RANGE,
  status.FAILED_PRECONDITION,
  status.RESOURCE_EXHAUSTED,
  status.UNAVAILABLE,
  status.DEADLINE_EXCEEDED,
];

/**
 * The agent's status map, applied at its gRPC edge (serveWithEdge). Bad input stays the
 * caller's fault: a request the agent refuses (ValidationError) is INVALID_ARGUMENT; the
 * executor's statuses in PASSED_ON pass through as `executor: <its message>`; a local stage
 * refusing its input maps like the executor's (`local stage: ...`), a replay miss is
 * FAILED_PRECONDITION (`EMULATION: ...`). Anything else, other executor statuses included, is
 * INTERNAL with a generic message, logged with its cause.
 */
export function toGrpcStatus(err: unknown): GrpcStatus {
  return statusOf(err, 'client-agent', (e) => {
    if (e instanceof ReplayMissError) return new StatusError(status.FAILED_PRECONDITION, `EMULATION: ${e.message}`, { cause: e });
    if (e instanceof StageInputError)
      return new StatusError(e.kind === 'precondition' ? status.FAILED_PRECONDITION : status.INVALID_ARGUMENT, `local stage: ${e.message}`, { cause: e });
    // The executor's: a grpc-js ServiceError (a plain Error with a numeric code), or one standing for it.
    const { code, details, message } = e as { code?: unknown; details?: string; message?: string };
    const fromExecutor = e instanceof ExecutorStatusError || (!(e instanceof StatusError) && typeof code === 'number');
    return fromExecutor && PASSED_ON.includes(code as status) ? new StatusError(code as status, `executor: ${details ?? message}`, { cause: e }) : undefined;
  });
}
