import { env, envTable, loadEnv } from '../src';
import { problemsOf } from './config-problems';

const schema = {
  ADDR: env.string('listen address', '127.0.0.1:0'),
  MODEL: env.string('model directory'),
  MAX: env.int('max sessions', 64, 1, 4096),
  RATIO: env.number('slow-down factor', 1, 1),
  BATCH: env.bool('batch sessions', true),
  ALGO: env.oneOf('algorithm', 'dp', ['dp', 'greedy']),
};

describe('loadEnv', () => {
  it('applies defaults and parses values', () => {
    const c = loadEnv(schema, { MODEL: '/m', MAX: '8', BATCH: 'false', ALGO: 'greedy', RATIO: '2.5' });
    expect(c).toEqual({ ADDR: '127.0.0.1:0', MODEL: '/m', MAX: 8, RATIO: 2.5, BATCH: false, ALGO: 'greedy' });
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('lists every problem with the variable, the rule and the value given', () => {
    expect(problemsOf(() => loadEnv(schema, { MAX: '0', BATCH: 'maybe', ALGO: 'x', RATIO: 'fast' }))).toEqual([
      'MODEL is required (model directory)',
      "MAX must be an integer in 1..4096, given '0'",
      "RATIO must be a number in 1..Infinity, given 'fast'",
      "BATCH must be true or false, given 'maybe'",
      "ALGO must be one of dp, greedy, given 'x'",
    ]);
  });

  it('documents each variable in a table', () => {
    expect(envTable(schema)).toContain('| `MAX` | 64 | max sessions |');
  });
});
