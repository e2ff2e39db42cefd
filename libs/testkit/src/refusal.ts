import { status as grpcStatus } from '@grpc/grpc-js';
import { MAX_STATUS_BYTES } from '@tandem/protocol';

/**
 * Asserts (with jest's `expect`) that a call was refused with `code`, with a message that
 * contains every one of `parts` and fits in MAX_STATUS_BYTES (the cap every service applies:
 * gRPC C-core clients refuse trailers over 8 KiB and then see RESOURCE_EXHAUSTED instead).
 * Codes are compared by name, so a failure reads `UNAVAILABLE` rather than `14`.
 */
export function expectRefusal(refusal: { readonly code?: number; readonly details?: string } | undefined, code: grpcStatus, ...parts: string[]): void {
  expect(grpcStatus[refusal?.code ?? grpcStatus.OK]).toBe(grpcStatus[code]);
  const details = refusal?.details;
  expect(typeof details).toBe('string');
  for (const p of parts) expect(details).toContain(p);
  expect(Buffer.byteLength(details ?? '', 'utf8')).toBeLessThanOrEqual(MAX_STATUS_BYTES);
}
