/** @tandem/service-kit: what every Tandem service shares: env config, logging, shutdown, NATS, TLS and token auth. */
export { ConfigError, env, envTable, loadEnv } from './env';
export type { EnvSchema, EnvValues, EnvVar } from './env';
export { createLogger } from './logger';
export type { Logger } from './logger';
export { onShutdownSignal } from './shutdown';
export { connectNats } from './nats';
export type { ConnectNatsOptions, NatsConnection } from './nats';
export { checkNatsCredentials, describeNatsAuth, isNatsAuthError, natsAuthEnv, natsAuthFrom, natsConnectAuth } from './nats-auth';
export type { NatsAuth, NatsAuthValues } from './nats-auth';
export {
  DEFAULT_PLANNER_STATE_BUCKET,
  natsPasswordVar,
  natsPermissions,
  natsServerConfig,
  natsServiceEnv,
  plannerStatePermissions,
} from './nats-server-config';
export type { NatsAuthMode, NatsRole, NatsServerConfig, NatsServerConfigOptions, NatsUserCredential } from './nats-server-config';
export { bindInsecure, shutdownServer } from './grpc-server';
export { grpcKeepaliveEnv, keepaliveFrom } from './grpc-keepalive';
export type { GrpcKeepaliveValues } from './grpc-keepalive';
export { startTelemetry, TelemetryPublisher } from './telemetry';
export type { TelemetryPublisherOptions, TelemetrySettings } from './telemetry';
export {
  AUTH_METADATA_KEY,
  AuthError,
  bearerOptions,
  bindServer,
  checkIdentity,
  clientOptions,
  loadClientSecurity,
  loadServerSecurity,
  loadUpstreamSecurity,
  MIN_TOKEN_LENGTH,
  newSecret,
  OPERATOR_IDENTITY,
  serverAuthOptions,
  serverSecurityConfig,
  serverSecurityEnv,
  TokenTable,
  tokenInterceptor,
  upstreamSecurityConfig,
  upstreamSecurityEnv,
  writeTokensFile,
} from './security';
export type { ClientSecurity, ClientSecurityFiles, ServerSecurity, ServerSecurityConfig, UpstreamSecurityConfig } from './security';
export { makeCertificates } from './certs';
export type { CertificateOptions, CertificateSet } from './certs';
export { errorEdge, runMain, serveWithEdge, statusOf, StatusError, ValidationError } from './errors';
export type { EdgeHandlers, ErrorEdge, GrpcStatus } from './errors';
export { closeHttpServer, Counter, Gauge, Histogram, hostOf, LATENCY_BUCKETS_S, MetricsEndpoint, metricsPortEnv, Registry } from './metrics';
export { counter, latencyHistogram, readCounter, readCounterBy, readGauge, readGaugeBy } from './metrics';
export type { LabelledFigures } from './metrics';
