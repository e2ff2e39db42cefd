import { docJsonBlock } from '@tandem/testkit';
import { InstanceValidationError, isGenerationInstance, validateGenerationInstance, type GenerationInstance } from './index';

/** The generation instance docs/placement.md shows (marked, with optional stage work, E2E/TTFT/TPOT SLOs and entry work), which validates as it is. */
const EXAMPLE = docJsonBlock('docs/placement.md', 'generation-example:instance') as GenerationInstance & { generation: true };
const good = (): GenerationInstance & { generation: true } => structuredClone(EXAMPLE);

function errorOf(value: unknown, prefix?: string): string {
  try {
    validateGenerationInstance(value, prefix);
  } catch (err) {
    if (err instanceof InstanceValidationError) return err.message;
    throw err;
  }
  throw new Error('expected a validation error');
}

describe('validateGenerationInstance', () => {
  it('returns a clean copy holding only the known fields', () => {
    const whole = { serverPrefillMs: 30, serverDecodeMs: 0.4, serverDecodeWork: 0.45 };
    const got = validateGenerationInstance({
      ...good(),
      note: 'ignored',
      serverDecoding: false,
      serverEntryWork: 0.6,
      resolutionMs: 0.5,
      serverWholeModel: { ...whole, extra: 1 },
      serverQueueMs: 4,
      serverDecodeQueueMs: 2,
      serverStreamedQueueMs: 0,
    });
    expect(got).toEqual({
      ...good(),
      serverDecoding: false,
      serverEntryWork: 0.6,
      resolutionMs: 0.5,
      serverWholeModel: whole,
      serverQueueMs: 4,
      serverDecodeQueueMs: 2,
      serverStreamedQueueMs: 0,
    });
  });

  it.each<[string, (g: ReturnType<typeof good>) => unknown, string]>([
    [
      'a negative decode time',
      (g) => ({ ...g, stages: [g.stages[0], { ...g.stages[1], clientDecodeMs: -1 }] }),
      'stages[1].clientDecodeMs must be a finite number >= 0, given -1',
    ],
    [
      'a bad optional work',
      (g) => ({ ...g, stages: [{ ...g.stages[0], serverPrefillWork: 'x' }, g.stages[1]] }),
      'stages[0].serverPrefillWork must be a finite number >= 0, given "x"',
    ],
    ['a fractional prompt', (g) => ({ ...g, promptTokens: 1.5 }), 'promptTokens must be an integer >= 1, given 1.5'],
    ['negative decode steps', (g) => ({ ...g, decodeSteps: -1 }), 'decodeSteps must be an integer >= 0, given -1'],
    ['no SLO stated', (g) => ({ ...g, slo: {} }), 'slo must state at least one of e2eMs, ttftMs, tpotMs, given {}'],
    ['a zero SLO', (g) => ({ ...g, slo: { tpotMs: 0 } }), 'slo.tpotMs must be a finite number > 0, given 0'],
    [
      'a missing slo',
      (g) => {
        const { slo: _, ...rest } = g;
        return { ...rest, generation: true };
      },
      'slo must be an object {e2eMs?, ttftMs?, tpotMs?}, given nothing (missing)',
    ],
    ['a bad marker', (g) => ({ ...g, generation: 'yes' }), 'generation must be true in a generation instance (or absent), given "yes"'],
    ['a non-boolean serverDecoding', (g) => ({ ...g, serverDecoding: 1 }), 'serverDecoding must be a boolean, given 1'],
    ['a negative decode queue wait', (g) => ({ ...g, serverDecodeQueueMs: -0.5 }), 'serverDecodeQueueMs must be a finite number >= 0, given -0.5'],
    [
      'a streamed queue wait that is not a number',
      (g) => ({ ...g, serverStreamedQueueMs: '2' }),
      'serverStreamedQueueMs must be a finite number >= 0, given "2"',
    ],
    [
      'a whole-model cost that is not an object',
      (g) => ({ ...g, serverWholeModel: 3 }),
      'serverWholeModel must be an object {serverPrefillMs, serverDecodeMs, serverPrefillWork?, serverDecodeWork?}, given 3',
    ],
    [
      'a whole-model cost missing its decode time',
      (g) => ({ ...g, serverWholeModel: { serverPrefillMs: 3 } }),
      'serverWholeModel.serverDecodeMs must be a finite number >= 0, given nothing (missing)',
    ],
    [
      'a negative whole-model work',
      (g) => ({ ...g, serverWholeModel: { serverPrefillMs: 3, serverDecodeMs: 1, serverPrefillWork: -2 } }),
      'serverWholeModel.serverPrefillWork must be a finite number >= 0, given -2',
    ],
    ['a zero bandwidth', (g) => ({ ...g, uplink: { latencyMs: 1, bytesPerMs: 0 } }), 'uplink.bytesPerMs must be a finite number > 0, given 0'],
  ])('rejects %s naming the field, the rule and the value', (_, make, message) => {
    expect(errorOf(make(good()))).toBe(message);
  });

  it('prefixes the array index', () => {
    expect(errorOf({ ...good(), outBytesPerPass: -8 }, '[3].')).toBe('[3].outBytesPerPass must be a finite number >= 0, given -8');
  });
});

describe('isGenerationInstance', () => {
  it('reads the marker, or a slo without slaMs; a contract instance stays one', () => {
    expect(isGenerationInstance(good())).toBe(true);
    const { generation: _, ...unmarked } = good();
    expect(isGenerationInstance(unmarked)).toBe(true);
    expect(isGenerationInstance({ stages: [], slaMs: 100, slo: { ttftMs: 1 } })).toBe(false);
    expect(isGenerationInstance({ stages: [], slaMs: 100 })).toBe(false);
    expect(isGenerationInstance([good()])).toBe(false);
  });
});
