/**
 * Load shedding to the devices, for an overloaded server (docs/planner.md, "Overload").
 *
 * When the server's measured utilisation stays at or above `above`, no plan of a class that
 * leans on it meets its SLOs: every request in the server's queue is late, whichever class it
 * belongs to. Sending *every* such class to its devices (the fastest placement at that load)
 * gives up all of them, including those the server could still serve; keeping every one
 * (server-only) lets the queue grow until none is served in time. The shedder does what is
 * between: it moves the fewest (client, request class) pairs to their least-server-work plan
 * that bring the server back under `above`, and lets the others keep the plans that meet
 * their SLOs when it is not overloaded.
 *
 * The rule:
 * - **shed** when utilisation ≥ `above` and nothing changed for `dwellMs`: take the
 *   candidates (classes whose plan in force misses its SLOs at the current load and whose
 *   least-work plan saves server work) by work saved per request, most first, so each request
 *   given up frees the most server time; shed them until the work they free at their request
 *   rates (from the outcomes), scaled by what a ms of predicted work measures on the server,
 *   brings utilisation down to `below`, and at least one.
 * - **restore** when utilisation ≤ `below` and nothing changed for `dwellMs`: give back the
 *   most recently shed pairs, last first, while the utilisation they would add back at their
 *   rates keeps it at most `below` (one at a time, and only below `below` / 2, for a pair whose
 *   rate is not known yet).
 * - No flapping: a shed pair is restored only when the estimate says the server stays under
 *   `below` with it, which is below `above` by the gap between them; every change waits
 *   `dwellMs` after the last one, so the load reports see its effect before the next.
 *
 * Pure state machine: time and telemetry come in as arguments (tests inject them); no I/O.
 */

/** Settings (the planner's PLANNER_SHED_* variables). */
export interface ShedOptions {
  /** Shed only while enabled; disabling restores nothing by itself (the planner clears the set). */
  readonly enabled: boolean;
  /** Utilisation at or above which the server is overloaded: shed. */
  readonly above: number;
  /** Utilisation to shed down to, and at or below which shed pairs come back. */
  readonly below: number;
  /** Time after any change before the next, ms. */
  readonly dwellMs: number;
}

export const DEFAULT_SHEDDING: ShedOptions = Object.freeze({ enabled: true, above: 0.92, below: 0.75, dwellMs: 3000 });

/** A (client, request class) the shedder may shed: its plan in force misses its SLOs at the current load. */
export interface ShedCandidate {
  readonly clientId: string;
  readonly requestClass: string;
  /** Server work per request its least-work plan saves against the plan in force, ms (> 0). */
  readonly workSavedMs: number;
  /** Its requests per second, as the outcomes show (0 when not known yet). */
  readonly ratePerS: number;
}

/** What one decision changed. */
export interface ShedDecision {
  readonly shed: readonly ShedCandidate[];
  readonly restored: readonly ShedCandidate[];
}

const key = (clientId: string, requestClass: string): string => `${clientId}\u0000${requestClass}`;

export class Shedder {
  /** Shed pairs in the order they were shed, with the work and rate they had then. */
  private readonly shedPairs = new Map<string, ShedCandidate>();
  private lastChangeMs = -Infinity;

  /** @throws RangeError naming the option when one is out of its range. */
  constructor(readonly opts: ShedOptions) {
    if (!(opts.above > 0 && opts.above <= 1)) throw new RangeError(`shedding option above must be in (0, 1], given ${opts.above}`);
    if (!(opts.below > 0 && opts.below < opts.above)) throw new RangeError(`shedding option below must be in (0, above=${opts.above}), given ${opts.below}`);
    if (!(opts.dwellMs >= 0)) throw new RangeError(`shedding option dwellMs must be >= 0, given ${opts.dwellMs}`);
  }

  /** Whether this client's class is shed (placed on its least-server-work plan). */
  isShed(clientId: string, requestClass: string): boolean {
    return this.shedPairs.has(key(clientId, requestClass));
  }

  /** Shed pairs, first shed first. */
  get shed(): readonly ShedCandidate[] {
    return [...this.shedPairs.values()];
  }

  /**
   * One decision on a load report: `utilisation` is the server's (smoothed) utilisation, `rateOf`
   * a shed pair's current request rate (to price giving it back; 0 when unknown), `candidates`
   * the pairs that could be shed now (only read when shedding), `workScale` the server time one
   * ms of the plans' predicted work takes (the measured utilisation over the load the plans
   * offer; ≥ 1: the process spends more than its stages' compute), which scales every estimate
   * of the utilisation a pair frees or adds back.
   */
  decide(
    utilisation: number,
    now: number,
    candidates: () => readonly ShedCandidate[],
    rateOf: (clientId: string, requestClass: string) => number,
    workScale = 1,
  ): ShedDecision {
    const none: ShedDecision = { shed: [], restored: [] };
    if (!this.opts.enabled || now - this.lastChangeMs < this.opts.dwellMs) return none;
    const { above, below } = this.opts;
    if (utilisation >= above) {
      const order = candidates()
        .filter((c) => c.workSavedMs > 0 && !this.shedPairs.has(key(c.clientId, c.requestClass)))
        .sort((a, b) => b.workSavedMs - a.workSavedMs || a.clientId.localeCompare(b.clientId) || a.requestClass.localeCompare(b.requestClass));
      const shed: ShedCandidate[] = [];
      let u = utilisation;
      for (const c of order) {
        if (shed.length > 0 && u <= below) break;
        shed.push(c);
        this.shedPairs.set(key(c.clientId, c.requestClass), c);
        u -= (workScale * c.ratePerS * c.workSavedMs) / 1000;
        // A pair of unknown rate frees an unknown share: one at a time, then look again.
        if (c.ratePerS <= 0) break;
      }
      if (shed.length > 0) this.lastChangeMs = now;
      return { shed, restored: [] };
    }
    if (utilisation > below || this.shedPairs.size === 0) return none;
    const restored: ShedCandidate[] = [];
    let u = utilisation;
    for (const c of [...this.shedPairs.values()].reverse()) {
      const rate = rateOf(c.clientId, c.requestClass);
      const added = (workScale * rate * c.workSavedMs) / 1000;
      if (rate > 0 ? u + added > below : restored.length > 0 || u > below / 2) break;
      restored.push(c);
      this.shedPairs.delete(key(c.clientId, c.requestClass));
      u += added;
      if (rate <= 0) break;
    }
    if (restored.length > 0) this.lastChangeMs = now;
    return { shed: [], restored };
  }

  /** Drops a client's pairs (it was forgotten). */
  forget(clientId: string): void {
    for (const [k, c] of this.shedPairs) if (c.clientId === clientId) this.shedPairs.delete(k);
  }
}
