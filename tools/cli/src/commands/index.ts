import type { Command } from '../command';
import { planCommand } from './plan';

/** Every `tandem` sub-command. Each lives in its own file under commands/. */
export const commands: readonly Command[] = [planCommand];
