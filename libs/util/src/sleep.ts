/** Resolves after `ms` milliseconds (at once, without a timer, when `ms` is not above 0). */
export function sleep(ms: number): Promise<void> {
  return ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms)) : Promise.resolve();
}

/**
 * Waits for `p` to settle, at most `ms` milliseconds: resolves true when it settled in time
 * (whether it fulfilled or rejected), false when the time ran out first. The timer is cleared
 * either way, so nothing keeps the process alive after it.
 */
export async function settledWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), Math.max(0, ms));
  });
  try {
    return await Promise.race([
      p.then(
        () => true,
        () => true,
      ),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}
