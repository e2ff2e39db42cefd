import pino, { type Logger } from 'pino';

export type { Logger } from 'pino';

/** The root JSON logger of a service. Only main.ts calls this; components get children. */
export function createLogger(opts: { name: string; level: string }): Logger {
  return pino({ name: opts.name, level: opts.level, redact: ['prompt', 'ids', 'tensor', 'data'] });
}
