/** @tandem/service-kit: what every Tandem service shares: env config, logging, shutdown, NATS. */
export { ConfigError, env, envTable, loadEnv } from './env';
export type { EnvSchema, EnvValues, EnvVar } from './env';
export { createLogger } from './logger';
export type { Logger } from './logger';
export { onShutdownSignal } from './shutdown';
export { connectNats } from './nats';
export type { NatsConnection } from './nats';
export { bindInsecure, shutdownServer } from './grpc-server';
export { TelemetryPublisher } from './telemetry';
export type { TelemetryPublisherOptions } from './telemetry';
