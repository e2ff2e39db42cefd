/** Resolves after `ms` milliseconds (at once, without a timer, when `ms` is not above 0). */
export function sleep(ms: number): Promise<void> {
  return ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms)) : Promise.resolve();
}
