import { isWildcardHost } from '@tandem/protocol';
import { env, grpcKeepaliveEnv, loadEnv, metricsPortEnv, natsAuthEnv, natsAuthFrom, serverSecurityEnv, type EnvValues } from '@tandem/service-kit';

/** Default of EXECUTOR_MAX_BATCH_TOKENS (also the scheduler's when a caller sets none). */
export const DEFAULT_MAX_BATCH_TOKENS = 4096;

/** Default of EXECUTOR_LONG_STEP_TOKENS: steps of more positions are prefills interleaved with decode steps. */
export const DEFAULT_LONG_STEP_TOKENS = 64;
/** Default of EXECUTOR_PREFILL_STALL_MS. */
export const DEFAULT_PREFILL_STALL_MS = 10;

/** Every environment variable the server-executor reads, with its default. */
export const executorEnv = {
  MODEL_DIR: env.string('Model directory (tandem-model/1) whose stages this executor serves'),
  EXECUTOR_ADDR: env.string('gRPC listen address host:port (port 0 picks a free port)', '127.0.0.1:50051'),
  EXECUTOR_ADVERTISE_ADDR: env.optionalAddress(
    "The gRPC address (host:port) clients reach this executor at, published in every load report (ServerLoad.address) so a planner with several executors can assign clients to it; 'off' advertises none (the planner then plans from this executor's reports but never assigns it a client). Unset: EXECUTOR_ADDR's host with the bound port when that host is concrete (127.0.0.1, a name, an interface's address); none when it is a wildcard (0.0.0.0, ::), which names no address a client could use",
    '(EXECUTOR_ADDR if concrete)',
    ['off'],
  ),
  EXECUTOR_METRICS_PORT: metricsPortEnv('EXECUTOR_ADDR'),
  ...serverSecurityEnv,
  ...grpcKeepaliveEnv,
  EXECUTOR_ID: env.string('Id in telemetry and logs', 'executor'),
  EXECUTOR_MAX_SESSIONS: env.int('Concurrent split sessions; one more is refused with RESOURCE_EXHAUSTED', 64, 1, 100_000),
  EXECUTOR_MAX_SESSIONS_PER_CLIENT: env.int(
    "Concurrent sessions one client id (OpenSession.client_id) may hold; one more is refused with RESOURCE_EXHAUSTED naming the client and a retry hint (also in the trailer 'retry-after-ms'); 0 means no limit beyond EXECUTOR_MAX_SESSIONS",
    0,
    0,
    100_000,
  ),
  EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT: env.int(
    "Tokens per second one client id (OpenSession.client_id) may have the server compute: a token bucket per client with a burst of one second's worth counts each step's positions (a prompt's prefill, then one per decode step), split sessions' steps and server-side generations alike. A step that does not fit is answered with StepRefused (RESOURCE_EXHAUSTED naming the client, the limit and the rate, retry hint in ms; the session stays open, the client sends the step again after it); a server-side generation is refused (trailer 'retry-after-ms'; the agent sends it again on a new session after the hint, within its deadline) only when the bucket is empty, and once running is paced instead of failed; 0 means no limit",
    0,
    0,
    1_000_000,
  ),
  EXECUTOR_RETRY_AFTER_MS: env.int(
    "Retry hint sent when opening a session is refused with RESOURCE_EXHAUSTED (sessions, per-client sessions, KV budget): in the trailer 'retry-after-ms' and, for the per-client limit, in the message, ms",
    1000,
    0,
    3_600_000,
  ),
  EXECUTOR_MAX_CONTEXT_TOKENS: env.int("Tokens (prompt + generated) one session may hold; 0 means the model's nPositions", 0, 0, 1_000_000),
  EXECUTOR_MAX_KV_BYTES: env.int(
    "KV-cache bytes all sessions together may hold (float32 keys and values: 8 × nEmbd bytes per token per block); a step or server-side generation that would exceed it, or a session opened when not one more token fits, is refused with RESOURCE_EXHAUSTED; 0 means a quarter of the machine's memory",
    0,
    0,
  ),
  EXECUTOR_MAX_MESSAGE_BYTES: env.int('Largest gRPC message accepted or sent, bytes', 64 * 1024 * 1024, 1024, 2 ** 31 - 1),
  EXECUTOR_BATCHING: env.bool('Run steps of several sessions waiting at the same position-wise stage as one batch', true),
  EXECUTOR_DECODE_ROUNDS: env.bool(
    'When only one-token steps over the whole model wait (sessions decoding on the server), run them as one call to the inference thread, batched there stage by stage, instead of one call per stage (with EXECUTOR_BATCHING)',
    true,
  ),
  EXECUTOR_MAX_BATCH: env.int('Most sessions in one batch', 16, 1, 1024),
  EXECUTOR_MAX_BATCH_TOKENS: env.int(
    'Most tokens in one batch: a batch takes waiting steps while their tokens stay within this (a single longer step still runs, alone), so one call stays short',
    DEFAULT_MAX_BATCH_TOKENS,
    1,
    1 << 20,
  ),
  EXECUTOR_LONG_STEP_TOKENS: env.int(
    'Steps of more positions than this (prompt prefills) run stage by stage, after waiting short steps (decode steps), so a decode step waits for one stage call of a prefill rather than all of it; 0 turns interleaving off',
    DEFAULT_LONG_STEP_TOKENS,
    0,
    1 << 20,
  ),
  EXECUTOR_PREFILL_STALL_MS: env.int(
    'A long step held back by short ones for this long gets the next call, so prefills advance under a steady stream of decode steps, but never sooner after the last long call than that call took (long steps take at most half of the engine while short ones wait), ms',
    DEFAULT_PREFILL_STALL_MS,
    0,
    60_000,
  ),
  EXECUTOR_ENGINE: env.oneOf(
    "Where onnxruntime runs: 'worker' (a worker thread, so gRPC, health and status are answered while a batch computes) or 'inline' (on the event loop, which a batch then blocks)",
    'worker',
    ['worker', 'inline'],
  ),
  EXECUTOR_FUSED: env.bool(
    'Also load one fused onnxruntime session over every stage, so a step that runs alone (server-side decoding) is one call instead of one per stage; it holds a second copy of the weights (gpt2: about +640 MB RSS)',
    true,
  ),
  EXECUTOR_RETURN_MEMORY: env.bool(
    "Give memory back after bursts: onnxruntime runs without its CPU memory arena (which otherwise stays at the largest call's working set) and the engine collects garbage once a burst is over (no session open, or a quarter of the peak; KV buffers are freed only by the collector); with MALLOC_MMAP_THRESHOLD_=131072 in the environment glibc then returns large freed blocks at once. Costs CPU on long prefills (`npm run bench:memory`)",
    false,
  ),
  EXECUTOR_IDLE_TIMEOUT_MS: env.int('A session with no message for this long is ended with DEADLINE_EXCEEDED and freed', 60_000, 100, 86_400_000),
  EXECUTOR_THREADS: env.int('onnxruntime intra-op threads (0 lets onnxruntime choose)', 0, 0, 256),
  EXECUTOR_SHUTDOWN_GRACE_MS: env.int('On SIGTERM, how long open sessions may finish before they are cancelled', 10_000, 0, 3_600_000),
  NATS_URL: env.string("NATS server for telemetry; 'off' disables telemetry", 'nats://127.0.0.1:4222'),
  ...natsAuthEnv,
  TELEMETRY_INTERVAL_MS: env.int('How often the load report is published', 1000, 50, 3_600_000),
  LOG_LEVEL: env.oneOf('pino log level', 'info', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
};

export type ExecutorConfig = EnvValues<typeof executorEnv>;

/**
 * The address this executor advertises (ServerLoad.address), or undefined for none:
 * EXECUTOR_ADVERTISE_ADDR when set ('off': none); unset, the listen address's host with the
 * bound port when that host is concrete, none when it is a wildcard.
 */
export function advertisedAddress(advertise: string | undefined, listenHost: string, boundPort: number): string | undefined {
  if (advertise === 'off') return undefined;
  if (advertise !== undefined) return advertise;
  if (isWildcardHost(listenHost)) return undefined;
  return listenHost.includes(':') && !listenHost.startsWith('[') ? `[${listenHost}]:${boundPort}` : `${listenHost}:${boundPort}`;
}

/** Reads the executor's configuration. @throws ConfigError listing every problem. */
export function loadConfig(source: Readonly<Record<string, string | undefined>>): ExecutorConfig {
  const config = loadEnv(executorEnv, source);
  natsAuthFrom(config);
  return config;
}
