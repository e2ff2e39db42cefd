import { status } from '@grpc/grpc-js';

/**
 * Bad usage or bad input: the CLI prints `message` as one line on stderr and exits 2.
 * The message names the flag or field, the rule and the value given.
 */
export class UsageError extends Error {
  override name = 'UsageError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * A call to a service ended with an error status. The message (one line) names the service,
 * the call, the status code name and the service's message, then `hint`; the grpc-js error is
 * the `cause` (TANDEM_DEBUG=1 prints it). Exit 2 when the service refused the input
 * (INVALID_ARGUMENT), 1 otherwise.
 */
export class ServiceCallError extends Error {
  override name = 'ServiceCallError';
  /** The status code (UNKNOWN when the error carried none). */
  readonly code: status;
  /** @param service e.g. `the planner at 127.0.0.1:50052`; `call` the method, e.g. `ListPlans`. */
  constructor(service: string, call: string, err: unknown, hint: (code: status) => string = () => '') {
    const e = err as { code?: unknown; details?: string; message?: string };
    const code = typeof e.code === 'number' ? (e.code as status) : status.UNKNOWN;
    // grpc-js's own details for a connection that failed: the reason without the resolver's notes, on one line.
    const detail = String(e.details || e.message || err)
      .replace(/\s*Resolution note:.*$/s, '')
      .replace(/^No connection established\. Last error: (Error: )?/, '')
      .replace(/\s+/g, ' ');
    super(`${service}: ${call} failed with ${status[code] ?? code}: ${detail}${hint(code)}`, { cause: err });
    this.code = code;
  }

  get exitCode(): number {
    return this.code === status.INVALID_ARGUMENT ? 2 : 1;
  }

  /** `err` as a ServiceCallError when it is a status (it carries a numeric code); any other error as it is. */
  static of(service: string, call: string, err: unknown, hint?: (code: status) => string): unknown {
    return typeof (err as { code?: unknown } | undefined)?.code === 'number' ? new ServiceCallError(service, call, err, hint) : err;
  }
}
