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
