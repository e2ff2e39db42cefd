/**
 * Rendering of echoed values in status messages. A status message travels in the gRPC trailer,
 * and gRPC C-core clients (Python, C++; Go's default is similar) refuse metadata over 8 KiB, so
 * a message that echoes a whole input (a 20,000-character id, a shape of 5,000 dims) would
 * reach them as RESOURCE_EXHAUSTED instead of its reason. Every echoed value is cut here (as
 * libs/model's `renderGiven` does), and every status message is capped at
 * {@link MAX_STATUS_BYTES} as a last guard.
 */

/** Longest rendering of one echoed value, characters (as libs/model's renderGiven). */
export const MAX_GIVEN_CHARS = 120;

/** Largest status message the services send, UTF-8 bytes. */
export const MAX_STATUS_BYTES = 1024;

/** Cuts `s` to at most `max` characters, marking the cut with `...` and the full length. */
export function cut(s: string, max = MAX_GIVEN_CHARS): string {
  if (s.length <= max) return s;
  const note = `... (${s.length} chars)`;
  return `${s.slice(0, Math.max(0, max - note.length))}${note}`;
}

/** A string value for a message: quoted and cut. */
export function quoted(s: string, max = MAX_GIVEN_CHARS): string {
  return `'${cut(s, max - 2)}'`;
}

/** A shape (or any list of numbers) for a message: `[1, 2, 64]`, cut, with the dim count when cut. */
export function renderShape(shape: readonly (number | bigint)[], sep = ', '): string {
  const full = `[${shape.join(sep)}]`;
  if (full.length <= MAX_GIVEN_CHARS) return full;
  const note = `...] (${shape.length} dims)`;
  return `${full.slice(0, MAX_GIVEN_CHARS - note.length)}${note}`;
}

/**
 * Caps a whole status message at `maxBytes` UTF-8 bytes (never splitting a character), ending a
 * cut message with `...`. Messages built from cut values stay far below it; this is the guard.
 */
export function capStatus(details: string, maxBytes = MAX_STATUS_BYTES): string {
  if (Buffer.byteLength(details, 'utf8') <= maxBytes) return details;
  let s = details.slice(0, maxBytes);
  while (Buffer.byteLength(s, 'utf8') > maxBytes - 3) s = s.slice(0, -1);
  // Do not leave half a surrogate pair behind.
  if (/[\uD800-\uDBFF]$/.test(s)) s = s.slice(0, -1);
  return `${s}...`;
}
