import { Writable } from 'node:stream';
import type { Logger } from '@tandem/service-kit';
import pino from 'pino';

/** A JSON log line as pino writes it. */
export interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

/** A logger at `level` whose JSON lines are kept, for asserting what was logged at which level. */
export function capturingLogger(level = 'debug'): { log: Logger; lines: () => LogLine[] } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return {
    log: pino({ level }, stream) as unknown as Logger,
    lines: () =>
      chunks
        .join('')
        .split('\n')
        .filter((l) => l)
        .map((l) => JSON.parse(l) as LogLine),
  };
}
