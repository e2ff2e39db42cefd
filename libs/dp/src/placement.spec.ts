import { placementFromLetters, placementToLetters } from './placement';

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
