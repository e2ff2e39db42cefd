import type { Command } from '../command';
import { planCommand } from './plan';
import { simulateCommand } from './simulate';
import { forwardCommand } from './forward';
import { generateCommand } from './generate';
import { modelCreateCommand } from './model-create';
import { modelImportCommand } from './model-import';
import { plansCommand } from './plans';
import { demoCommand } from './demo';
import { loadtestCommand } from './loadtest';
import { certsCommand } from './certs';
import { natsConfigCommand } from './nats-config';

/** Every `tandem` sub-command. Each lives in its own file under commands/. */
export const commands: readonly Command[] = [
  planCommand,
  simulateCommand,
  modelCreateCommand,
  modelImportCommand,
  forwardCommand,
  generateCommand,
  plansCommand,
  demoCommand,
  loadtestCommand,
  certsCommand,
  natsConfigCommand,
];
