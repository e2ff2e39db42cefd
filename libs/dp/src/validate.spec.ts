import { InstanceValidationError, validateInstance } from './index';

const good = () => ({
  stages: [
    { name: 'embed', clientMs: 0.9, serverMs: 0.2, serverWork: 0.2, inBytes: 40 },
    { name: 'block.0.attn', clientMs: 3.1, serverMs: 0.7, serverWork: 0.7, inBytes: 15360 },
    { name: 'block.0.mlp', clientMs: 3.1, serverMs: 0.7, serverWork: 0.7, inBytes: 15360 },
    { name: 'head', clientMs: 3.1, serverMs: 0.7, serverWork: 0.7, inBytes: 15360 },
  ],
  outBytes: 4,
  uplink: { latencyMs: 10, bytesPerMs: 2500 },
  downlink: { latencyMs: 10, bytesPerMs: 12500 },
  slaMs: 250,
  resolutionMs: 0.5,
});

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
        (v.stages[3] as Record<string, unknown>).clientMs = -1;
        return v;
      },
      'stages[3].clientMs must be a finite number >= 0, given -1',
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
        (v.stages[2] as Record<string, unknown>).name = 7;
        return v;
      },
      'stages[2].name must be a string, given 7',
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
    v.stages[3].clientMs = -1;
    const err = errorOf(v, '[2].');
    expect(err.field).toBe('[2].stages[3].clientMs');
    expect(err.rule).toBe('must be a finite number >= 0');
    expect(err.given).toBe('-1');
    expect(errorOf(42, '[0].').message).toBe('[0] must be an object, given 42');
  });
});
