import type { CliIo } from './io';

/** One `tandem` sub-command. `run` resolves with the exit code (0 ok, 2 bad input, 1 failure). */
export interface Command {
  /** Words after `tandem`, e.g. `['model', 'create']`. */
  readonly path: readonly string[];
  /** One line for `tandem --help`. */
  readonly summary: string;
  /** Usage text for `tandem <path> --help`. */
  readonly usage: string;
  run(argv: readonly string[], io: CliIo): Promise<number>;
}
