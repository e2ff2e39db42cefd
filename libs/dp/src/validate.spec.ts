import { docJsonBlock } from '@tandem/testkit';
import { InstanceValidationError, validateInstance, type PlacementInstance } from './index';

type Mutable<T> = { -readonly [K in keyof T]: Mutable<T[K]> };

/** The instance docs/placement.md shows (two stages, resolutionMs stated), which validates as it is. */
const EXAMPLE = docJsonBlock('docs/placement.md', 'contract-example:instance') as Mutable<PlacementInstance>;
const good = (): Mutable<PlacementInstance> => structuredClone(EXAMPLE);

function errorOf(value: unknown, prefix?: string): InstanceValidationError {
  try {
    validateInstance(value, prefix);
  } catch (err) {
    if (err instanceof InstanceValidationError) return err;
    throw err;
  }
  throw new Error('expected a validation error');
}

describe('validateInstance', () => {
  it('returns a clean copy holding only the known fields', () => {
    const got = validateInstance({ ...good(), comment: 'ignored', stages: good().stages.map((s) => ({ ...s, extra: 1 })) });
    expect(got).toEqual(good());
    expect(Object.keys(got.stages[0]).sort()).toEqual(['clientMs', 'inBytes', 'name', 'serverMs', 'serverWork']);
  });

  it('keeps resolutionMs optional', () => {
    const { resolutionMs: _, ...rest } = good();
    expect(validateInstance(rest).resolutionMs).toBeUndefined();
  });

  it.each<[string, (v: ReturnType<typeof good>) => unknown, string]>([
    [
      'negative time',
      (v) => {
        (v.stages[1] as Record<string, unknown>).clientMs = -1;
        return v;
      },
      'stages[1].clientMs must be a finite number >= 0, given -1',
    ],
    [
      'missing field',
      (v) => {
        delete (v.stages[1] as Record<string, unknown>).serverWork;
        return v;
      },
      'stages[1].serverWork must be a finite number >= 0, given nothing (missing)',
    ],
    [
      'wrong type',
      (v) => {
        (v.stages[0] as Record<string, unknown>).inBytes = '40';
        return v;
      },
      'stages[0].inBytes must be a finite number >= 0, given "40"',
    ],
    [
      'name not a string',
      (v) => {
        (v.stages[1] as Record<string, unknown>).name = 7;
        return v;
      },
      'stages[1].name must be a string, given 7',
    ],
    [
      'zero bandwidth',
      (v) => {
        v.uplink.bytesPerMs = 0;
        return v;
      },
      'uplink.bytesPerMs must be a finite number > 0, given 0',
    ],
    [
      'negative link latency',
      (v) => {
        v.downlink.latencyMs = -2;
        return v;
      },
      'downlink.latencyMs must be a finite number >= 0, given -2',
    ],
    [
      'missing link',
      (v) => {
        delete (v as Record<string, unknown>).downlink;
        return v;
      },
      'downlink must be an object {latencyMs, bytesPerMs}, given nothing (missing)',
    ],
    [
      'negative size',
      (v) => {
        v.outBytes = -4;
        return v;
      },
      'outBytes must be a finite number >= 0, given -4',
    ],
    [
      'zero SLA',
      (v) => {
        v.slaMs = 0;
        return v;
      },
      'slaMs must be a finite number > 0, given 0',
    ],
    [
      'zero resolution',
      (v) => {
        v.resolutionMs = 0;
        return v;
      },
      'resolutionMs must be a finite number > 0, given 0',
    ],
    [
      'empty stages',
      (v) => {
        v.stages = [];
        return v;
      },
      'stages must be a non-empty array, given []',
    ],
    [
      'stage not an object',
      (v) => {
        (v.stages as unknown[])[1] = null;
        return v;
      },
      'stages[1] must be an object, given null',
    ],
  ])('rejects %s with a line naming the field, the rule and the value', (_, mutate, message) => {
    const err = errorOf(mutate(good()));
    expect(err.message).toBe(message);
    expect(message.startsWith(err.field)).toBe(true);
  });

  it('prefixes the field with the index of the instance in an array', () => {
    const v = good();
    v.stages[1].clientMs = -1;
    const err = errorOf(v, '[2].');
    expect(err.field).toBe('[2].stages[1].clientMs');
    expect(err.rule).toBe('must be a finite number >= 0');
    expect(err.given).toBe('-1');
    expect(errorOf(42, '[0].').message).toBe('[0] must be an object, given 42');
  });
});
