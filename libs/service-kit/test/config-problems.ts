import { ConfigError } from '../src';

/** The problems of the ConfigError `fn` throws (a test fails on any other error, or none). */
export function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return [...(err as ConfigError).problems];
  }
  throw new Error('expected a ConfigError');
}
