import {
  env,
  grpcKeepaliveEnv,
  loadEnv,
  metricsPortEnv,
  natsAuthEnv,
  natsAuthFrom,
  serverSecurityEnv,
  upstreamSecurityEnv,
  type EnvValues,
} from '@tandem/service-kit';
import { DEFAULT_LINK_PROBE_BYTES } from './link';
import { MAX_PLANNERS } from './plan-follower';

/** Every environment variable the client-agent reads, with its default. */
export const agentEnv = {
  MODEL_DIR: env.string('Model directory (the same model the executor serves)'),
  AGENT_ID: env.pattern("This device's id (telemetry subject and plan key)", 'agent-1', /^[A-Za-z0-9_-]{1,64}$/, '1..64 letters, digits, - or _'),
  AGENT_CLASS: env.string('Device class; selects the SLAs in the planner configuration', 'default'),
  AGENT_ADDR: env.string('Local gRPC address of the Generate API (port 0 picks a free port)', '127.0.0.1:50061'),
  AGENT_METRICS_PORT: metricsPortEnv('AGENT_ADDR'),
  ...serverSecurityEnv,
  AGENT_STAGES: env.pattern("Stages this device may run: 'all' or a list like 0-3,7", 'all', /^(all|\d+(-\d+)?(,\d+(-\d+)?)*)$/, "'all' or a list like 0-3,7"),
  AGENT_PRIVATE: env.bool(
    "This device's token ids and text never leave it: plans keep the first stage (embedding) and the last (head) here, sessions say so to the executor, and with no plan it runs everything itself (needs AGENT_STAGES to hold both)",
    false,
  ),
  AGENT_THREADS: env.int('onnxruntime intra-op threads for the local stages (0 lets onnxruntime choose)', 1, 0, 256),
  AGENT_SLOWDOWN: env.number(
    'EMULATION: each local stage is padded to this many times its measured time, to act as a slower device on one machine; 1 = real speed',
    1,
    1,
    1000,
  ),
  AGENT_LINK_LATENCY_MS: env.number('EMULATION: one-way latency added to every transfer to or from the server, ms', 0, 0, 10_000),
  AGENT_LINK_UP_BYTES_PER_MS: env.number('EMULATION: uplink throughput, bytes/ms (0 = not limited)', 0, 0),
  AGENT_LINK_DOWN_BYTES_PER_MS: env.number('EMULATION: downlink throughput, bytes/ms (0 = not limited)', 0, 0),
  AGENT_LINK_PROBE_BYTES: env.int(
    "Bytes of the link probe: while the link's throughput is unmeasured, the agent times uploads and downloads of this many bytes to the executor (ExecutorService.ProbeLink; 2 to 6 each way, until the two fastest agree within 5 %; the fastest counts), so the first plans price transfers on the link; 0 = no probes (generations' own transfers measure it)",
    DEFAULT_LINK_PROBE_BYTES,
    0,
    1_048_576,
  ),
  AGENT_REPLAY_FILE: env.string(
    'EMULATION: a recording of device-stage outputs (written by `tandem loadtest`); local stages are then not computed but replayed from it, each sleeping its recorded uncontended cost × AGENT_SLOWDOWN, so many emulated devices can share a core; a history not in the recording fails its generation. Empty = compute the stages (a real device)',
    '',
  ),
  EXECUTOR_ADDR: env.string(
    "The server-executor, host:port: where generations open when the plan names no executor (ClientPlan.executor), and the last one tried when the plan's executor and its alternates refuse as unavailable",
    '127.0.0.1:50051',
  ),
  PLANNER_ADDR: env.addressList(
    "The planner, host:port; or several planners sharing their state (PLANNER_STATE_BUCKET), comma-separated: the agent watches one and moves to the next when its plan stream is lost; 'off' runs all-server (or the request's placement)",
    '127.0.0.1:50071',
    MAX_PLANNERS,
    ['off'],
  ),
  ...upstreamSecurityEnv,
  ...grpcKeepaliveEnv,
  NATS_URL: env.string("NATS server for telemetry; 'off' disables telemetry", 'nats://127.0.0.1:4222'),
  ...natsAuthEnv,
  TELEMETRY_INTERVAL_MS: env.int('How often the device profile is published', 1000, 50, 3_600_000),
  AGENT_DEADLINE_MS: env.int('Deadline of one generation against the executor', 120_000, 100, 86_400_000),
  AGENT_MAX_MESSAGE_BYTES: env.int('Largest gRPC message sent or accepted, bytes', 64 * 1024 * 1024, 1024, 2 ** 31 - 1),
  AGENT_SHUTDOWN_GRACE_MS: env.int('On SIGTERM, how long running generations may finish', 10_000, 0, 3_600_000),
  LOG_LEVEL: env.oneOf('pino log level', 'info', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
};

export type AgentConfig = EnvValues<typeof agentEnv>;

/** Reads the agent's configuration. @throws ConfigError listing every problem. */
export function loadConfig(source: Readonly<Record<string, string | undefined>>): AgentConfig {
  const config = loadEnv(agentEnv, source);
  natsAuthFrom(config);
  return config;
}

/** Expands 'all' or '0-3,7' into stage indices below `stageCount`. */
export function parseStageList(spec: string, stageCount: number): number[] {
  if (spec === 'all') return Array.from({ length: stageCount }, (_, i) => i);
  const out = new Set<number>();
  for (const part of spec.split(',')) {
    const [a, b] = part.split('-').map(Number);
    // '4-1' would otherwise name no stage at all, silently.
    if (b !== undefined && b < a) throw new Error(`AGENT_STAGES ranges must run upwards (A-B with A <= B), given '${part}'`);
    for (let i = a; i <= (b ?? a); i++) {
      if (i >= stageCount) throw new Error(`AGENT_STAGES must name stages in 0..${stageCount - 1}, given ${i}`);
      out.add(i);
    }
  }
  return [...out].sort((x, y) => x - y);
}

/**
 * A private device must hold the stages that see its token ids and text: the first (the
 * embedding) and the last (the head). @throws Error naming AGENT_STAGES otherwise.
 */
export function checkPrivateStages(stages: readonly number[], stageCount: number, spec: string): void {
  const missing = [0, stageCount - 1].filter((s) => !stages.includes(s));
  if (missing.length > 0) {
    throw new Error(`AGENT_STAGES must hold stages 0 and ${stageCount - 1} when AGENT_PRIVATE=true (token ids and text stay on the device), given '${spec}'`);
  }
}
