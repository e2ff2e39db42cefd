/** @tandem/service-kit: what every Tandem service shares: env config, logging, shutdown, NATS. */
export { ConfigError, env, envTable, loadEnv } from './env';
export type { EnvSchema, EnvValues, EnvVar } from './env';
export { createLogger } from './logger';
export type { Logger } from './logger';
export { onShutdownSignal } from './shutdown';
export { connectNats } from './nats';
export type { ConnectNatsOptions, NatsConnection } from './nats';
export { checkNatsCredentials, describeNatsAuth, isNatsAuthError, natsAuthEnv, natsAuthFrom, natsConnectAuth } from './nats-auth';
export type { NatsAuth, NatsAuthValues } from './nats-auth';
export { natsPasswordVar, natsPermissions, natsServerConfig, natsServiceEnv } from './nats-server-config';
export type { NatsAuthMode, NatsRole, NatsServerConfig, NatsServerConfigOptions, NatsUserCredential } from './nats-server-config';
export { bindInsecure, shutdownServer } from './grpc-server';
export { TelemetryPublisher } from './telemetry';
export type { TelemetryPublisherOptions } from './telemetry';
