import { inspect } from 'node:util';
import { capStatus, quoted } from '@tandem/protocol';
import type { Command } from './command';
import { commands } from './commands';
import { ServiceCallError, UsageError } from './errors';
import type { CliIo } from './io';

function helpText(): string {
  const width = Math.max(...commands.map((c) => c.path.join(' ').length));
  return [
    'usage: tandem <command> [options]',
    '',
    'commands:',
    ...commands.map((c) => `  ${c.path.join(' ').padEnd(width)}  ${c.summary}`),
    '',
    'Run `tandem <command> --help` for its options.',
  ].join('\n');
}

/** Finds the command whose path is the longest prefix of argv. */
function resolve(argv: readonly string[]): { command: Command; rest: readonly string[] } | undefined {
  let best: Command | undefined;
  for (const c of commands) {
    if (c.path.every((w, i) => argv[i] === w) && (!best || c.path.length > best.path.length)) best = c;
  }
  return best ? { command: best, rest: argv.slice(best.path.length) } : undefined;
}

/** Runs one CLI invocation and resolves with its exit code. Never throws. */
export async function runCli(argv: readonly string[], io: CliIo): Promise<number> {
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    io.stdout.write(`${helpText()}\n`);
    return argv.length === 0 ? 2 : 0;
  }
  const found = resolve(argv);
  if (!found) {
    io.stderr.write(
      `tandem: unknown command ${quoted(
        argv
          .filter((a) => !a.startsWith('-'))
          .slice(0, 2)
          .join(' '),
      )}; run 'tandem --help' for the list\n`,
    );
    return 2;
  }
  const { command, rest } = found;
  if (rest.includes('--help') || rest.includes('-h')) {
    io.stdout.write(`${command.usage}\n`);
    return 0;
  }
  try {
    return await command.run(rest, io);
  } catch (err) {
    const prefix = `tandem ${command.path.join(' ')}: `;
    if (err instanceof UsageError || err instanceof ServiceCallError) {
      // One line of at most 1 KiB (cut with capStatus), whatever value the message echoes.
      io.stderr.write(`${capStatus(prefix + err.message)}\n`);
      if (err instanceof ServiceCallError && process.env.TANDEM_DEBUG) io.stderr.write(`${inspect(err)}\n`);
      return err instanceof UsageError ? 2 : err.exitCode;
    }
    io.stderr.write(`${prefix}${(err as Error)?.message ?? String(err)}\n`);
    // The stack, and the chain of causes.
    if (process.env.TANDEM_DEBUG) io.stderr.write(`${inspect(err)}\n`);
    return 1;
  }
}

/** Process entry point used by bin/tandem.js. */
export function main(argv: readonly string[]): void {
  runCli(argv, { stdout: process.stdout, stderr: process.stderr }).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.stderr.write(`tandem: ${String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
