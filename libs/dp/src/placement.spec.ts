import { isPlacementLetters, placementFromLetters, placementToLetters, planKey } from './placement';

describe('placement letters', () => {
  it('turn a placement into one letter per stage and back', () => {
    expect(placementToLetters(['client', 'server', 'server', 'client'])).toBe('CSSC');
    expect(placementFromLetters('CSSC')).toEqual(['client', 'server', 'server', 'client']);
    expect(placementFromLetters('')).toEqual([]);
  });

  it('refuse a letter other than C or S, naming its index', () => {
    expect(() => placementFromLetters('CSx')).toThrow(`placement[2] must be 'C' (client) or 'S' (server), given "x"`);
    expect(() => placementFromLetters('cs')).toThrow(/^placement\[0\] must be/);
  });
});

describe('isPlacementLetters and planKey', () => {
  it('accepts one C or S per stage and nothing else', () => {
    expect(isPlacementLetters('CSC', 3)).toBe(true);
    expect(isPlacementLetters('CS', 3)).toBe(false);
    expect(isPlacementLetters('CxS', 3)).toBe(false);
    expect(isPlacementLetters('', 0)).toBe(false);
  });
  it('names a phased plan by both placements and any other by its one', () => {
    expect(planKey({ placement: 'SSC', decodePlacement: 'CCC' })).toBe('SSC/CCC');
    expect(planKey({ placement: 'SSC', decodePlacement: 'SSC' })).toBe('SSC');
    expect(planKey({ placement: 'SSC' })).toBe('SSC');
  });
});
