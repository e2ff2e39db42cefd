import { type GrpcStatus, statusOf } from '@tandem/service-kit';

/**
 * The planner's status map, applied at its gRPC edge (serveWithEdge): its handlers throw only
 * StatusErrors (ValidationError, AuthError), which carry their status; anything else is
 * INTERNAL with a generic message, logged with its cause.
 */
export function toGrpcStatus(err: unknown): GrpcStatus {
  return statusOf(err, 'planner');
}
