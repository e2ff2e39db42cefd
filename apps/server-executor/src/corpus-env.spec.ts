import { loadServerSecurity } from '@tandem/service-kit';
import { envCases, envCorpusTests, SERVICE_ENV_BOUNDS, type EnvCase } from '@tandem/testkit';
import { executorEnv, loadConfig } from './config';

// Bad-input corpus, env surface (e2e/test/CORPUS.md): each of the executor's variables with a
// bad value is refused with a problem naming the variable, the rule and the value, in 1 KiB.

const LONG = 'x'.repeat(20_000);
const cases: EnvCase[] = [
  ...envCases(SERVICE_ENV_BOUNDS),
  ...envCases({
    int: [
      ['EXECUTOR_METRICS_PORT', 0, 65_535],
      ['EXECUTOR_MAX_SESSIONS', 1, 100_000],
      ['EXECUTOR_MAX_SESSIONS_PER_CLIENT', 0, 100_000],
      ['EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT', 0, 1_000_000],
      ['EXECUTOR_RETRY_AFTER_MS', 0, 3_600_000],
      ['EXECUTOR_MAX_CONTEXT_TOKENS', 0, 1_000_000],
      ['EXECUTOR_MAX_MESSAGE_BYTES', 1024, 2 ** 31 - 1],
      ['EXECUTOR_MAX_BATCH', 1, 1024],
      ['EXECUTOR_MAX_BATCH_TOKENS', 1, 1 << 20],
      ['EXECUTOR_LONG_STEP_TOKENS', 0, 1 << 20],
      ['EXECUTOR_PREFILL_STALL_MS', 0, 60_000],
      ['EXECUTOR_IDLE_TIMEOUT_MS', 100, 86_400_000],
      ['EXECUTOR_THREADS', 0, 256],
      ['EXECUTOR_SHUTDOWN_GRACE_MS', 0, 3_600_000],
      ['TELEMETRY_INTERVAL_MS', 50, 3_600_000],
    ],
    bool: ['EXECUTOR_BATCHING', 'EXECUTOR_DECODE_ROUNDS', 'EXECUTOR_FUSED', 'EXECUTOR_RETURN_MEMORY'],
    oneOf: [['EXECUTOR_ENGINE', ['worker', 'inline']]],
  }),
  [
    'EXECUTOR_ADVERTISE_ADDR without a port',
    { EXECUTOR_ADVERTISE_ADDR: 'exec-1' },
    ['EXECUTOR_ADVERTISE_ADDR must be host:port', "(or 'off')", "given 'exec-1'"],
  ],
  [
    'EXECUTOR_ADVERTISE_ADDR with port 0',
    { EXECUTOR_ADVERTISE_ADDR: 'exec-1:0' },
    ['EXECUTOR_ADVERTISE_ADDR must be host:port with a port in 1..65535', "given 'exec-1:0'"],
  ],
  [
    'a 20,000-character EXECUTOR_ADVERTISE_ADDR, cut',
    { EXECUTOR_ADVERTISE_ADDR: `${LONG}:1` },
    ['EXECUTOR_ADVERTISE_ADDR must be host:port of at most 260 characters, given 20002', '(20002 chars)'],
  ],
  ['MODEL_DIR missing', { MODEL_DIR: '' }, ['MODEL_DIR is required']],
  ['EXECUTOR_MAX_KV_BYTES negative', { EXECUTOR_MAX_KV_BYTES: '-1' }, ['EXECUTOR_MAX_KV_BYTES must be an integer in 0..', "given '-1'"]],
  ['a 20,000-character EXECUTOR_MAX_SESSIONS, cut', { EXECUTOR_MAX_SESSIONS: LONG }, ['EXECUTOR_MAX_SESSIONS must be an integer', '(20000 chars)']],
  ['NATS_USER with a space', { NATS_USER: 'a b', NATS_PASSWORD: 'p' }, ['NATS_USER must be 1..64 letters', "given 'a b'"]],
  ['NATS_USER without NATS_PASSWORD', { NATS_USER: 'exec' }, ['NATS_PASSWORD is required when NATS_USER is set']],
  [
    'a 20,000-character NATS_NKEY_SEED_FILE that does not exist, cut',
    { NATS_NKEY_SEED_FILE: `/nonexistent/${LONG}` },
    ['NATS_NKEY_SEED_FILE must name a readable file', '(20013 chars)'],
  ],
];

describe('executor env corpus', () => {
  envCorpusTests({ schema: executorEnv, cases, load: (vars) => loadConfig({ MODEL_DIR: '/m', ...vars }), exactlyOne: true });

  envCorpusTests({
    title: 'refuses the security setting %s',
    cases: [
      [
        'TLS_CERT_FILE that does not exist, cut',
        { TLS_CERT_FILE: `/nonexistent/${LONG}`, TLS_KEY_FILE: '/nonexistent/k' },
        ['TLS_CERT_FILE must name a readable file', '(20013 chars)'],
      ],
      ['TLS_CLIENT_AUTH=require without a CA', { TLS_CLIENT_AUTH: 'require' }, ["TLS_CA_FILE is required when TLS_CLIENT_AUTH is 'require'"]],
      [
        'AUTH_TOKENS_FILE that does not exist',
        { AUTH_TOKENS_FILE: '/nonexistent/tokens' },
        ['AUTH_TOKENS_FILE must name a readable file', "given '/nonexistent/tokens'", 'no such file'],
      ],
    ],
    load: (vars) => loadServerSecurity(loadConfig({ MODEL_DIR: '/m', ...vars })),
  });
});
