import { clearMessageProblem, envCases, envCorpusTests, SERVICE_ENV_BOUNDS, type EnvCase } from '@tandem/testkit';
import { agentEnv, checkPrivateStages, loadConfig, parseStageList } from './config';

// Bad-input corpus, env surface (e2e/test/CORPUS.md): each of the agent's variables with a
// bad value is refused with a problem naming the variable, the rule and the value, in 1 KiB.

const LONG = 'x'.repeat(20_000);
const cases: EnvCase[] = [
  ...envCases(SERVICE_ENV_BOUNDS),
  ...envCases({
    int: [
      ['AGENT_METRICS_PORT', 0, 65_535],
      ['AGENT_THREADS', 0, 256],
      ['TELEMETRY_INTERVAL_MS', 50, 3_600_000],
      ['AGENT_DEADLINE_MS', 100, 86_400_000],
      ['AGENT_MAX_MESSAGE_BYTES', 1024, 2 ** 31 - 1],
      ['AGENT_SHUTDOWN_GRACE_MS', 0, 3_600_000],
      ['AGENT_LINK_PROBE_BYTES', 0, 1_048_576],
    ],
    number: [
      ['AGENT_SLOWDOWN', 1, 1000],
      ['AGENT_LINK_LATENCY_MS', 0, 10_000],
      ['AGENT_LINK_UP_BYTES_PER_MS', 0, Number.POSITIVE_INFINITY],
      ['AGENT_LINK_DOWN_BYTES_PER_MS', 0, Number.POSITIVE_INFINITY],
    ],
    bool: ['AGENT_PRIVATE'],
  }),
  ['MODEL_DIR missing', { MODEL_DIR: '' }, ['MODEL_DIR is required']],
  ['AGENT_ID with a dot', { AGENT_ID: 'dev.1' }, ['AGENT_ID must be 1..64 letters', "given 'dev.1'"]],
  ['AGENT_ID of 20,000 characters, cut', { AGENT_ID: LONG }, ['AGENT_ID must be 1..64 letters', '(20000 chars)']],
  ['AGENT_STAGES not a list', { AGENT_STAGES: 'some' }, ['AGENT_STAGES must be', "given 'some'"]],
  ['AGENT_STAGES with a trailing comma', { AGENT_STAGES: '0-3,' }, ['AGENT_STAGES must be', "given '0-3,'"]],
  ['PLANNER_ADDR without a port', { PLANNER_ADDR: 'planner' }, ['PLANNER_ADDR must be host:port (no port given)', "given 'planner'"]],
  [
    'PLANNER_ADDR list with a bad second entry',
    { PLANNER_ADDR: 'p1:50071,p2:0' },
    ['PLANNER_ADDR entry 2 (p2:0) must be host:port with a port in 1..65535', "given 'p1:50071,p2:0'"],
  ],
  ['PLANNER_ADDR list with a comma too many', { PLANNER_ADDR: 'p1:50071,' }, ['PLANNER_ADDR entry 2 is empty', "(or 'off')"]],
  ['PLANNER_ADDR listing 9 planners', { PLANNER_ADDR: 'p:1,'.repeat(8) + 'p:1' }, ['PLANNER_ADDR must list at most 8 addresses']],
  ['NATS_USER of 100 characters', { NATS_USER: 'u'.repeat(100), NATS_PASSWORD: 'p' }, ['NATS_USER must be 1..64 letters']],
];

describe('client-agent env corpus', () => {
  envCorpusTests({ schema: agentEnv, cases, load: (vars) => loadConfig({ MODEL_DIR: '/m', ...vars }) });

  it.each([
    ['naming a stage past the model', '0-9', ['AGENT_STAGES must name stages in 0..5', 'given 6']],
    ['with a range that runs backwards (it named no stage at all)', '4-1', ['AGENT_STAGES ranges must run upwards', "given '4-1'"]],
  ])('refuses AGENT_STAGES %s, naming the rule', (_what, spec, parts) => {
    let msg = '';
    try {
      parseStageList(spec, 6);
    } catch (err) {
      msg = (err as Error).message;
    }
    expect(clearMessageProblem(msg, parts)).toBe('');
  });
});

describe('AGENT_PRIVATE', () => {
  it('needs AGENT_STAGES to hold the first and the last stage, naming both and the value given', () => {
    expect(() => checkPrivateStages(parseStageList('0-4', 6), 6, '0-4')).toThrow(
      "AGENT_STAGES must hold stages 0 and 5 when AGENT_PRIVATE=true (token ids and text stay on the device), given '0-4'",
    );
    expect(() => checkPrivateStages(parseStageList('1-5', 6), 6, '1-5')).toThrow(/given '1-5'/);
    expect(() => checkPrivateStages(parseStageList('0,5', 6), 6, '0,5')).not.toThrow();
  });
});
