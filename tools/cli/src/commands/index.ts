import type { Command } from '../command';

/** Every `tandem` sub-command. Each lives in its own file under commands/. */
export const commands: readonly Command[] = [];
