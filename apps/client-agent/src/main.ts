import { ModelFormatError, modelIdOf, readManifest } from '@tandem/model';
import {
  checkNatsCredentials,
  createLogger,
  keepaliveFrom,
  loadServerSecurity,
  loadUpstreamSecurity,
  natsAuthFrom,
  onShutdownSignal,
  runMain,
} from '@tandem/service-kit';
import { ClientAgent } from './client-agent';
import { checkPrivateStages, loadConfig, parseStageList } from './config';
import { LinkEmulator } from './link';
import { ReplayFormatError, ReplayRecording } from './replay';

/** Composition root of the client-agent. */
export async function main(): Promise<void> {
  const config = loadConfig(process.env);
  // Certificates and tokens first: a bad file is a config error (exit 2) at once. On the local
  // API the tokens file's identities are not checked: any listed token may generate.
  const security = loadServerSecurity(config);
  const upstream = loadUpstreamSecurity(config);
  const log = createLogger({ name: 'client-agent', level: config.LOG_LEVEL });
  const natsAuth = natsAuthFrom(config);
  // Wrong NATS credentials stop the agent here (exit 2), not later as silent telemetry loss.
  if (config.NATS_URL !== 'off') await checkNatsCredentials(config.NATS_URL, natsAuth);
  const manifest = await readManifest(config.MODEL_DIR);
  const modelId = modelIdOf(config.MODEL_DIR);
  const replay =
    config.AGENT_REPLAY_FILE === ''
      ? undefined
      : ReplayRecording.load(config.AGENT_REPLAY_FILE, {
          modelId,
          stageCount: manifest.stages.length,
          nEmbd: manifest.config.nEmbd,
          vocabSize: manifest.config.vocabSize,
        });
  if (replay)
    log.info(
      { file: config.AGENT_REPLAY_FILE, bytes: replay.bytes, prompts: replay.header.prompts.length },
      'EMULATION: replaying device stages from a recording',
    );
  const stages = parseStageList(config.AGENT_STAGES, manifest.stages.length);
  if (config.AGENT_PRIVATE) checkPrivateStages(stages, manifest.stages.length, config.AGENT_STAGES);
  const agent = new ClientAgent({
    modelDir: config.MODEL_DIR,
    modelId,
    clientId: config.AGENT_ID,
    clientClass: config.AGENT_CLASS,
    address: config.AGENT_ADDR,
    stages,
    private: config.AGENT_PRIVATE,
    threads: config.AGENT_THREADS,
    slowdown: config.AGENT_SLOWDOWN,
    replay,
    link: new LinkEmulator(
      { latencyMs: config.AGENT_LINK_LATENCY_MS, bytesPerMs: config.AGENT_LINK_UP_BYTES_PER_MS },
      { latencyMs: config.AGENT_LINK_LATENCY_MS, bytesPerMs: config.AGENT_LINK_DOWN_BYTES_PER_MS },
    ),
    executorAddr: config.EXECUTOR_ADDR,
    plannerAddr: config.PLANNER_ADDR === 'off' ? undefined : config.PLANNER_ADDR,
    natsUrl: config.NATS_URL === 'off' ? undefined : config.NATS_URL,
    natsAuth,
    telemetryIntervalMs: config.TELEMETRY_INTERVAL_MS,
    deadlineMs: config.AGENT_DEADLINE_MS,
    maxMessageBytes: config.AGENT_MAX_MESSAGE_BYTES,
    log,
    security,
    upstream,
    keepalive: keepaliveFrom(config),
    metricsPort: config.AGENT_METRICS_PORT,
    linkProbeBytes: config.AGENT_LINK_PROBE_BYTES,
  });
  const { port } = await agent.start();
  process.stdout.write(`${JSON.stringify({ event: 'listening', service: 'client-agent', id: config.AGENT_ID, port, metricsPort: agent.metrics.port })}\n`);
  onShutdownSignal(() => agent.stop({ graceMs: config.AGENT_SHUTDOWN_GRACE_MS }));
}

// Exit 2 on bad configuration (environment, certificates, NATS credentials, MODEL_DIR, AGENT_REPLAY_FILE), 1 otherwise.
if (require.main === module) runMain('client-agent', main, [ModelFormatError, ReplayFormatError]);
