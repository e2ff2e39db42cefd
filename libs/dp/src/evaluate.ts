import type { Link, Location, Placement, PlacementCost, PlacementInstance } from './types';

/** Relative tolerance under which two figures count as equal (CONTRACT: 1e-9 relative). */
export const RELATIVE_TOLERANCE = 1e-9;

/** `a` equals `b` within {@link RELATIVE_TOLERANCE} of the larger magnitude. O(1). */
export function approxEqual(a: number, b: number): boolean {
  return Math.abs(a - b) <= RELATIVE_TOLERANCE * Math.max(Math.abs(a), Math.abs(b));
}

/** `a <= b`, where values equal within {@link RELATIVE_TOLERANCE} count as equal. O(1). */
export function approxLessOrEqual(a: number, b: number): boolean {
  return a <= b || approxEqual(a, b);
}

/** Time to move `bytes` over `link`, in ms: `latencyMs + bytes / bytesPerMs`. O(1). */
export function transferMs(link: Link, bytes: number): number {
  return link.latencyMs + bytes / link.bytesPerMs;
}

/**
 * Exact latency, server work and transfer count of `placement` on `instance`
 * (CONTRACT §3): compute times where each stage runs, a transfer of `stages[i].inBytes`
 * whenever stage i runs elsewhere than stage i-1 (stage -1 is the client), and the
 * download of `outBytes` when the last stage runs on the server. Sums left to right.
 * @throws RangeError when the placement's length differs from the number of stages or an
 *   entry is neither `'client'` nor `'server'`.
 * Complexity: O(S) for S stages.
 */
export function evaluatePlacement(instance: PlacementInstance, placement: Placement): PlacementCost {
  const { stages } = instance;
  if (placement.length !== stages.length) {
    throw new RangeError(`placement has ${placement.length} entries, the instance has ${stages.length} stages`);
  }
  let latencyMs = 0;
  let serverWork = 0;
  let switches = 0;
  let prev: Location = 'client';
  const entryWork = instance.serverEntryWork ?? 0;
  for (let i = 0; i < stages.length; i++) {
    const here = placement[i];
    const s = stages[i];
    if (here !== prev) {
      if (here === 'server') {
        latencyMs += transferMs(instance.uplink, s.inBytes);
        serverWork += entryWork;
      } else if (here === 'client') latencyMs += transferMs(instance.downlink, s.inBytes);
      else throw new RangeError(`placement[${i}] must be 'client' or 'server', given ${JSON.stringify(here)}`);
      switches++;
    }
    if (here === 'server') {
      latencyMs += s.serverMs;
      serverWork += s.serverWork;
    } else {
      latencyMs += s.clientMs;
    }
    prev = here;
  }
  if (prev === 'server') {
    latencyMs += transferMs(instance.downlink, instance.outBytes);
    switches++;
  }
  return { latencyMs, serverWork, switches };
}

/** Whether `latencyMs` meets the instance's SLA (within the relative tolerance). O(1). */
export function meetsSla(instance: PlacementInstance, latencyMs: number): boolean {
  return approxLessOrEqual(latencyMs, instance.slaMs);
}
