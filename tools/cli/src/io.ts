/** Where a command writes: stdout for results, stderr for progress and diagnostics. */
export interface CliIo {
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
}

/** Writes one JSON document and a newline to stdout. */
export function printJson(io: CliIo, value: unknown): void {
  io.stdout.write(`${JSON.stringify(value)}\n`);
}

/**
 * A progress line on stderr that rewrites itself on a TTY and prints a line per
 * whole-percent step (at most every 10 %) otherwise, so logs stay short.
 */
export function progressReporter(io: CliIo, label: string): (done: number, total: number, what?: string) => void {
  const tty = (io.stderr as NodeJS.WriteStream).isTTY === true;
  let lastDecile = -1;
  return (done, total, what) => {
    const frac = total > 0 ? done / total : 1;
    const pct = Math.floor(frac * 100);
    if (tty) {
      const width = 24;
      const filled = Math.round(frac * width);
      io.stderr.write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${pct}% ${what ?? ''}\x1b[K`);
      if (done >= total) io.stderr.write('\n');
      return;
    }
    const decile = Math.floor(pct / 10);
    if (decile !== lastDecile || done >= total) {
      lastDecile = decile;
      io.stderr.write(`${label}: ${pct}% ${what ?? ''}\n`);
    }
  };
}
