import type { Location, Placement } from './types';
import { InstanceValidationError } from './validate';

/** The `C`/`S` string of a placement: one letter per stage in stage order, `C` client, `S` server. */
export function placementToLetters(p: Placement): string {
  // A loop, not map + join: the planner names three placements per client per pass.
  let letters = '';
  for (const l of p) letters += l === 'client' ? 'C' : 'S';
  return letters;
}

/**
 * The placement a `C`/`S` string names, one stage per letter (the inverse of
 * {@link placementToLetters}). It does not know the stage count: a caller that does checks
 * the length.
 * @throws InstanceValidationError (field `placement[i]`) for a letter other than `C` or `S`.
 */
export function placementFromLetters(letters: string): Location[] {
  return [...letters].map((c, i): Location => {
    if (c === 'C') return 'client';
    if (c === 'S') return 'server';
    throw new InstanceValidationError(`placement[${i}]`, "must be 'C' (client) or 'S' (server)", c);
  });
}

/** Whether `letters` is a placement of `stageCount` stages: one `C` or `S` per stage. */
export function isPlacementLetters(letters: string, stageCount: number): boolean {
  return letters.length === stageCount && /^[CS]+$/.test(letters);
}

/**
 * A plan's identity: its placement, and for a phased plan (a decode placement that differs
 * from the prefill's) `placement/decodePlacement`, so a phased plan is a plan of its own
 * (the planner's calibration and change detection, the load test's records).
 */
export function planKey(c: { readonly placement: string; readonly decodePlacement?: string }): string {
  return c.decodePlacement && c.decodePlacement !== c.placement ? `${c.placement}/${c.decodePlacement}` : c.placement;
}

/**
 * The kind of a plan, by where its stages run over both phases: `server` (nothing on the
 * client), `device` (nothing on the server) or `split` (some of each: a plan whose tokens
 * cross the link). Plans of one kind err alike (the planner's calibration learns a correction
 * per kind). Takes a {@link planKey} or a placement's letters.
 */
export type PlacementKind = 'server' | 'split' | 'device';
export function placementKind(key: string): PlacementKind {
  if (!key.includes('C')) return 'server';
  return key.includes('S') ? 'split' : 'device';
}
