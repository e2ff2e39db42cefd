/**
 * @tandem/launcher: runs the Tandem services on this machine (the demo, the load test, the soak,
 * the benchmarks and the end-to-end tests use it): each app as a child process, its
 * environment checked against the app's schema; what a process used, from /proc; pinning with
 * taskset; and the cache of synthetic models. nats-server comes from @tandem/testkit.
 */
export { serviceEnv } from './env';
export type { AppName } from './env';
export { launchService, ServiceProcess, startService, stopServices } from './service';
export type { LaunchOptions } from './service';
export { affinityOf, cpuBusySeconds, cpuSeconds, hasTaskset, pinProcess, rssBytes, runQueueWaitSeconds } from './proc';
export { CACHE_SEED, ensurePresetModel, presetModelDir } from './model-cache';
