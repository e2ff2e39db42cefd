import { ModelFormatError } from '@tandem/model';
import { checkNatsCredentials, createLogger, keepaliveFrom, loadServerSecurity, natsAuthFrom, onShutdownSignal, runMain } from '@tandem/service-kit';
import { loadConfig } from './config';
import { OnnxStageEngine } from './engine';
import { ExecutorServer } from './executor-server';
import { WorkerStageEngine } from './worker-engine';

/** Composition root of the server-executor: config → logger → engine → server → signals. */
export async function main(): Promise<void> {
  const config = loadConfig(process.env);
  // Certificates and tokens before the model: a bad file is a config error (exit 2) at once.
  const security = loadServerSecurity(config);
  const log = createLogger({ name: 'server-executor', level: config.LOG_LEVEL });
  const natsAuth = natsAuthFrom(config);
  // Wrong NATS credentials stop the executor here (exit 2), not later as silent telemetry loss.
  if (config.NATS_URL !== 'off') await checkNatsCredentials(config.NATS_URL, natsAuth);
  const engineOpts = { intraOpNumThreads: config.EXECUTOR_THREADS, fuseAllStages: config.EXECUTOR_FUSED, returnMemory: config.EXECUTOR_RETURN_MEMORY };
  const engine =
    config.EXECUTOR_ENGINE === 'worker' ? await WorkerStageEngine.load(config.MODEL_DIR, engineOpts) : await OnnxStageEngine.load(config.MODEL_DIR, engineOpts);
  const server = new ExecutorServer({
    engine,
    log,
    address: config.EXECUTOR_ADDR,
    advertiseAddress: config.EXECUTOR_ADVERTISE_ADDR,
    serverId: config.EXECUTOR_ID,
    maxSessions: config.EXECUTOR_MAX_SESSIONS,
    maxSessionsPerClient: config.EXECUTOR_MAX_SESSIONS_PER_CLIENT,
    maxTokensPerSPerClient: config.EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT,
    retryAfterMs: config.EXECUTOR_RETRY_AFTER_MS,
    maxContextTokens: config.EXECUTOR_MAX_CONTEXT_TOKENS,
    maxKvBytes: config.EXECUTOR_MAX_KV_BYTES,
    maxMessageBytes: config.EXECUTOR_MAX_MESSAGE_BYTES,
    batching: config.EXECUTOR_BATCHING,
    maxBatch: config.EXECUTOR_MAX_BATCH,
    maxBatchTokens: config.EXECUTOR_MAX_BATCH_TOKENS,
    longStepTokens: config.EXECUTOR_LONG_STEP_TOKENS,
    prefillStallMs: config.EXECUTOR_PREFILL_STALL_MS,
    decodeRounds: config.EXECUTOR_DECODE_ROUNDS,
    idleTimeoutMs: config.EXECUTOR_IDLE_TIMEOUT_MS,
    natsUrl: config.NATS_URL === 'off' ? undefined : config.NATS_URL,
    natsAuth,
    telemetryIntervalMs: config.TELEMETRY_INTERVAL_MS,
    security,
    keepalive: keepaliveFrom(config),
    metricsPort: config.EXECUTOR_METRICS_PORT,
  });
  const { port } = await server.start();
  // One line on stdout that launchers (the demo, tests) read to learn the port.
  process.stdout.write(`${JSON.stringify({ event: 'listening', service: 'server-executor', port, metricsPort: server.metrics.port })}\n`);
  onShutdownSignal(() => server.stop({ graceMs: config.EXECUTOR_SHUTDOWN_GRACE_MS }));
  // An operator drains without stopping: clients move elsewhere, open sessions finish, the process stays until SIGTERM.
  process.on('SIGUSR2', () => server.drain());
}

// Exit 2 on bad configuration (environment, certificates, NATS credentials, MODEL_DIR), 1 otherwise.
if (require.main === module) runMain('server-executor', main, [ModelFormatError]);
