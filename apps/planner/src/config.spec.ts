import { ConfigError } from '@tandem/service-kit';
import { checkClasses, checkOverrides, loadConfig } from './config';

const base = { name: 'short', maxPromptTokens: 32, expectedNewTokens: 16 };

function problemsOf(env: Record<string, string>): string[] {
  try {
    loadConfig({ MODEL_DIR: '/m', ...env });
  } catch (err) {
    if (err instanceof ConfigError) return [...err.problems];
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('planner request classes', () => {
  it('accept slaMs, ttftMs and tpotMs in any mix, keeping only the stated ones', () => {
    expect(
      checkClasses([
        { ...base, ttftMs: 200, tpotMs: 40 },
        { ...base, name: 'long', maxPromptTokens: 64, slaMs: 900, tpotMs: 30 },
      ]),
    ).toEqual([
      { ...base, ttftMs: 200, tpotMs: 40 },
      { ...base, name: 'long', maxPromptTokens: 64, slaMs: 900, tpotMs: 30 },
    ]);
  });

  it.each<[string, unknown, string]>([
    ['no SLO', [{ ...base }], '[0] must state at least one of slaMs, ttftMs, tpotMs, given {"name":"short","maxPromptTokens":32,"expectedNewTokens":16}'],
    [
      'a zero TTFT',
      [
        { ...base, slaMs: 100 },
        { ...base, name: 'b', ttftMs: 0 },
      ],
      '[1].ttftMs must be a number > 0, given 0',
    ],
    ['a string TPOT', [{ ...base, tpotMs: '40' }], '[0].tpotMs must be a number > 0, given "40"'],
    ['a null slaMs', [{ ...base, slaMs: null }], '[0].slaMs must be a number > 0, given null'],
  ])('reject %s naming the index and the field', (_, value, message) => {
    expect(() => checkClasses(value)).toThrow(message);
  });

  it('reach the environment with the variable named', () => {
    expect(problemsOf({ PLANNER_REQUEST_CLASSES: JSON.stringify([{ ...base, tpotMs: -1 }]) })).toEqual([
      `PLANNER_REQUEST_CLASSES [0].tpotMs must be a number > 0, given -1, given '${JSON.stringify([{ ...base, tpotMs: -1 }])}'`,
    ]);
  });
});

describe('planner SLA overrides', () => {
  it('accept a number (slaMs) or an object of objectives', () => {
    expect(checkOverrides({ phone: { short: 900, long: { ttftMs: 300, tpotMs: 50 } } })).toEqual({ phone: { short: 900, long: { ttftMs: 300, tpotMs: 50 } } });
  });

  it.each<[string, unknown, string]>([
    ['a negative number', { phone: { short: -1 } }, '.phone.short must be a number > 0 (slaMs) or an object {slaMs?, ttftMs?, tpotMs?}, given -1'],
    ['an empty object', { phone: { short: {} } }, '.phone.short must state at least one of slaMs, ttftMs, tpotMs, given {}'],
    ['a bad objective', { phone: { short: { tpotMs: 'fast' } } }, '.phone.short.tpotMs must be a number > 0, given "fast"'],
  ])('reject %s naming the path', (_, value, message) => {
    expect(() => checkOverrides(value)).toThrow(message);
  });
});

describe('dp-grid with TTFT/TPOT SLOs', () => {
  it('is a configuration error naming the class and the override', () => {
    const problems = problemsOf({
      PLANNER_ALGORITHM: 'dp-grid',
      PLANNER_REQUEST_CLASSES: JSON.stringify([
        { ...base, slaMs: 100 },
        { ...base, name: 'chat', ttftMs: 100 },
      ]),
      PLANNER_SLA_OVERRIDES: JSON.stringify({ phone: { short: { tpotMs: 5 } } }),
    });
    expect(problems).toEqual([
      'PLANNER_REQUEST_CLASSES class "chat" states ttftMs or tpotMs, which PLANNER_ALGORITHM=dp-grid cannot bound (it bounds slaMs only); use dp',
      'PLANNER_SLA_OVERRIDES.phone.short states ttftMs or tpotMs, which PLANNER_ALGORITHM=dp-grid cannot bound (it bounds slaMs only); use dp',
    ]);
    expect(loadConfig({ MODEL_DIR: '/m', PLANNER_ALGORITHM: 'dp-grid' }).PLANNER_ALGORITHM).toBe('dp-grid');
  });
});

describe('PLANNER_DASHBOARD_PORT', () => {
  it('is off unless set, and 0 picks a free port', () => {
    expect(loadConfig({ MODEL_DIR: '/m' }).PLANNER_DASHBOARD_PORT).toBeUndefined();
    expect(loadConfig({ MODEL_DIR: '/m', PLANNER_DASHBOARD_PORT: '0', PLANNER_METRICS_PORT: '0' }).PLANNER_DASHBOARD_PORT).toBe(0);
  });

  it.each(['127.0.0.1:50071', 'localhost:50071', '[::1]:50071', '127.1.2.3:0'])('with tokens, is served on the loopback host of PLANNER_ADDR %s', (addr) => {
    expect(loadConfig({ MODEL_DIR: '/m', PLANNER_DASHBOARD_PORT: '8080', AUTH_TOKENS_FILE: '/t', PLANNER_ADDR: addr }).PLANNER_DASHBOARD_PORT).toBe(8080);
  });

  it.each(['0.0.0.0:50071', '[::]:50071', '10.0.0.5:50071', 'planner.example:50071'])(
    'with tokens, refuses the non-loopback host of PLANNER_ADDR %s (it would show every plan without a token)',
    (addr) => {
      const problems = problemsOf({ PLANNER_DASHBOARD_PORT: '8080', AUTH_TOKENS_FILE: '/t', PLANNER_ADDR: addr });
      expect(problems).toHaveLength(1);
      expect(problems[0]).toMatch(/^PLANNER_DASHBOARD_PORT with AUTH_TOKENS_FILE needs PLANNER_ADDR on a loopback host .*, given host '/);
    },
  );

  it('without tokens, is served on any host', () => {
    expect(loadConfig({ MODEL_DIR: '/m', PLANNER_DASHBOARD_PORT: '8080', PLANNER_ADDR: '0.0.0.0:50071' }).PLANNER_DASHBOARD_PORT).toBe(8080);
  });
});
