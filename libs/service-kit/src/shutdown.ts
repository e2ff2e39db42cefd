/**
 * Calls `stop` once on the first SIGTERM or SIGINT; a second signal exits at once.
 * Returns a function that removes the handlers.
 */
export function onShutdownSignal(stop: (signal: string) => Promise<void>, exit: (code: number) => void = (c) => process.exit(c)): () => void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals): void => {
    if (stopping) {
      exit(130);
      return;
    }
    stopping = true;
    stop(signal).then(
      () => exit(0),
      () => exit(1),
    );
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
  return () => {
    process.off('SIGTERM', handler);
    process.off('SIGINT', handler);
  };
}
