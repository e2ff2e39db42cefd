import { placementFromLetters, type Placement } from '@tandem/dp';
import { ModelOptionError } from './errors';

/**
 * Parses a placement string of `C` (client) / `S` (server), one character per stage.
 * @throws ModelOptionError (field `placement`) when the length is not `stageCount` or a character is
 *   neither `C` nor `S`.
 */
export function parsePlacement(str: string, stageCount: number): Placement {
  if (typeof str !== 'string' || str.length !== stageCount) {
    throw new ModelOptionError('placement', `have one C/S character per stage (${stageCount} characters)`, str);
  }
  const bad = str.search(/[^CS]/);
  if (bad >= 0) {
    throw new ModelOptionError('placement', `contain only 'C' (client) and 'S' (server); character ${bad} is '${str[bad]}'`, str);
  }
  return Object.freeze(placementFromLetters(str));
}

/** The `C`/`S` string of a placement (libs/dp's, which owns Placement). */
export { placementToLetters as formatPlacement } from '@tandem/dp';
