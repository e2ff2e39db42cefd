import { envCases, envCorpusTests, SERVICE_ENV_BOUNDS, type EnvCase } from '@tandem/testkit';
import { plannerEnv, loadConfig } from './config';

// Bad-input corpus, env surface (e2e/test/CORPUS.md): each of the planner's variables with a
// bad value is refused with a problem naming the variable, the rule and the value, in 1 KiB.

const LONG = 'x'.repeat(20_000);
const cases: EnvCase[] = [
  ...envCases(SERVICE_ENV_BOUNDS),
  ...envCases({
    int: [
      ['PLANNER_METRICS_PORT', 0, 65_535],
      ['PLANNER_DASHBOARD_PORT', 0, 65_535],
      ['PLANNER_CLIENT_TTL_MS', 1000, 86_400_000],
      ['PLANNER_DEBOUNCE_MS', 0, 60_000],
      ['PLANNER_SLICE_MS', 1, 1000],
      ['PLANNER_OUTCOME_MIN', 1, 100_000],
      ['PLANNER_SAFETY_DWELL_MS', 0, 86_400_000],
      ['PLANNER_SAFETY_RELAX_MS', 0, 86_400_000],
      ['PLANNER_SHED_DWELL_MS', 0, 3_600_000],
      ['PLANNER_LEADER_LEASE_MS', 200, 600_000],
    ],
    number: [
      ['PLANNER_HYSTERESIS', 0, 1],
      ['PLANNER_PHASED_MIN_SAVING', 0, 1],
      ['PLANNER_SLA_MARGIN', 0.1, 1],
      ['PLANNER_MAX_UTILISATION', 0, 0.99],
      ['PLANNER_IDLE_UTILISATION', 0, 1],
      ['PLANNER_UTILISATION_SMOOTHING', 0.01, 1],
      ['PLANNER_REPLAN_THRESHOLD', 0, 1],
      ['PLANNER_PREDICTION_PUSH_THRESHOLD', 0, 100],
      ['PLANNER_ENTRY_MARGIN', 0, 0.5],
      ['PLANNER_SLO_TARGET', 0.01, 1],
      ['PLANNER_SAFETY_STEP', 0.1, 0.99],
      ['PLANNER_CALIBRATION_CHANGE', 0, 10],
      ['PLANNER_SHED_ABOVE', 0.05, 1],
      ['PLANNER_SHED_BELOW', 0.01, 0.99],
      ['PLANNER_SHED_MAX_SLOWDOWN', 1, 100],
    ],
    bool: ['PLANNER_LEARN', 'PLANNER_CALIBRATE_BY_KIND', 'PLANNER_SHED'],
    oneOf: [['PLANNER_SERVER_LATENCY', ['stretch', 'mm1']]],
  }),
  [
    'PLANNER_SHED_BELOW not below PLANNER_SHED_ABOVE',
    { PLANNER_SHED_ABOVE: '0.8', PLANNER_SHED_BELOW: '0.8' },
    ['PLANNER_SHED_BELOW must be below PLANNER_SHED_ABOVE', 'given 0.8 and 0.8'],
  ],
  [
    'PLANNER_STATE_BUCKET not a bucket name',
    { PLANNER_STATE_BUCKET: 'plans.v1' },
    ["PLANNER_STATE_BUCKET must be a bucket name of 1..200 letters, digits, _ or -, or 'off'", "given 'plans.v1'"],
  ],
  ['PLANNER_ALGORITHM unknown', { PLANNER_ALGORITHM: 'magic' }, ['PLANNER_ALGORITHM must be one of dp', "given 'magic'"]],
  ['PLANNER_REQUEST_CLASSES not JSON', { PLANNER_REQUEST_CLASSES: '[{' }, ['PLANNER_REQUEST_CLASSES must be valid JSON', "given '[{'"]],
  ['PLANNER_REQUEST_CLASSES empty', { PLANNER_REQUEST_CLASSES: '[]' }, ['PLANNER_REQUEST_CLASSES must be a non-empty JSON array']],
  [
    'PLANNER_REQUEST_CLASSES without an SLO',
    { PLANNER_REQUEST_CLASSES: '[{"name":"a","maxPromptTokens":8,"expectedNewTokens":1}]' },
    ['PLANNER_REQUEST_CLASSES [0] must state at least one of slaMs'],
  ],
  [
    'PLANNER_REQUEST_CLASSES with a bad name',
    { PLANNER_REQUEST_CLASSES: '[{"name":"a b","maxPromptTokens":8,"expectedNewTokens":1,"slaMs":5}]' },
    ['PLANNER_REQUEST_CLASSES [0].name must be 1..64 letters'],
  ],
  [
    'PLANNER_REQUEST_CLASSES with maxPromptTokens 0',
    { PLANNER_REQUEST_CLASSES: '[{"name":"a","maxPromptTokens":0,"expectedNewTokens":1,"slaMs":5}]' },
    ['[0].maxPromptTokens must be an integer >= 1', 'given 0'],
  ],
  [
    'PLANNER_REQUEST_CLASSES with duplicate names',
    {
      PLANNER_REQUEST_CLASSES:
        '[{"name":"a","maxPromptTokens":8,"expectedNewTokens":1,"slaMs":5},{"name":"a","maxPromptTokens":9,"expectedNewTokens":1,"slaMs":5}]',
    },
    ['class names must be unique'],
  ],
  [
    'PLANNER_REQUEST_CLASSES of 20,000 characters, cut',
    { PLANNER_REQUEST_CLASSES: `[${' '.repeat(20_000)}` },
    ['PLANNER_REQUEST_CLASSES must be valid JSON', '(20001 chars)'],
  ],
  ['PLANNER_SLA_OVERRIDES an array', { PLANNER_SLA_OVERRIDES: '[1]' }, ['PLANNER_SLA_OVERRIDES must be a JSON object']],
  [
    'PLANNER_SLA_OVERRIDES with a negative SLA',
    { PLANNER_SLA_OVERRIDES: '{"phone":{"short":-5}}' },
    ['PLANNER_SLA_OVERRIDES .phone.short must be a number > 0', 'given -5'],
  ],
  ['PLANNER_OUTCOME_HALF_LIFE below 1', { PLANNER_OUTCOME_HALF_LIFE: '0.5' }, ['PLANNER_OUTCOME_HALF_LIFE must be a number in 1..100000', "given '0.5'"]],
  ['PLANNER_RESOLUTION_MS of 0', { PLANNER_RESOLUTION_MS: '0' }, ['PLANNER_RESOLUTION_MS must be a number in 0.001..Infinity', "given '0'"]],
  ['PLANNER_SERVER_ENTRY_MS negative', { PLANNER_SERVER_ENTRY_MS: '-1' }, ['PLANNER_SERVER_ENTRY_MS must be a number in 0..Infinity', "given '-1'"]],
  ['PLANNER_SAFETY_FLOOR above 1', { PLANNER_SAFETY_FLOOR: '2' }, ['PLANNER_SAFETY_FLOOR must be a number in 0.01..1', "given '2'"]],
  ['PLANNER_SLO_RELAX_MARGIN above 0.5', { PLANNER_SLO_RELAX_MARGIN: '0.9' }, ['PLANNER_SLO_RELAX_MARGIN must be a number in 0..0.5', "given '0.9'"]],
  ['a 20,000-character PLANNER_HYSTERESIS, cut', { PLANNER_HYSTERESIS: LONG }, ['PLANNER_HYSTERESIS must be a number in 0..1', '(20000 chars)']],
  [
    'PLANNER_DASHBOARD_PORT equal to PLANNER_METRICS_PORT',
    { PLANNER_DASHBOARD_PORT: '9464', PLANNER_METRICS_PORT: '9464' },
    ['PLANNER_DASHBOARD_PORT must differ from PLANNER_METRICS_PORT', 'given 9464 for both'],
  ],
  [
    'PLANNER_DASHBOARD_PORT with tokens on a non-loopback host',
    { PLANNER_DASHBOARD_PORT: '0', AUTH_TOKENS_FILE: '/t', PLANNER_ADDR: '0.0.0.0:50071' },
    ['PLANNER_DASHBOARD_PORT with AUTH_TOKENS_FILE needs PLANNER_ADDR on a loopback host', "given host '0.0.0.0'"],
  ],
  ['NATS_PASSWORD without NATS_USER', { NATS_PASSWORD: 'secret' }, ['NATS_USER is required when NATS_PASSWORD is set']],
];

describe('planner env corpus', () => {
  envCorpusTests({ schema: plannerEnv, cases, load: (vars) => loadConfig({ MODEL_DIR: '/m', ...vars }) });
});
