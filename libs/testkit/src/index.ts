/** @tandem/testkit: helpers for tests, benchmarks and tools. Production code never imports it. */
export { natsServerBinary, startNatsServer } from './nats-server';
export type { NatsServerHandle, StartNatsServerOptions } from './nats-server';
export { canConnect, freePort } from './ports';
export { TcpProxy } from './tcp-proxy';
// The one seeded PRNG (@tandem/util), here too for the tests that import it with the other helpers.
export { seededRandom } from '@tandem/util';
export { eventually, withTimeout } from './wait';
export { expectRefusal } from './refusal';
export { makeTempModel, suiteModel } from './models';
export type { TempModel } from './models';
export { gpt2Shapes, maxAbsDiff, randomWeights, referenceLogits, SMALL_HF_CONFIG, writeHfFixture, writeSafetensors } from './hf-fixture';
export type { Dtype, FixtureOptions, HfConfig, Weights } from './hf-fixture';
export { clearMessageProblem, configProblems, envCases, envCorpusTests, MAX_MESSAGE_BYTES, SERVICE_ENV_BOUNDS, uncoveredEnvVars } from './corpus';
export type { EnvBounds, EnvCase, EnvCorpus } from './corpus';
export { expectSamples, requireSample, sampleValue, scrapeMetrics, scrapeText } from './metrics';
export { clientProfile, generationOutcome, MET_E2E_SLA, planOutcome, sameStageTimes, serverLoad, stageTimes } from './telemetry';
export { classObservations, classPlacement } from './telemetry';
export { EXECUTOR_SETTINGS, PLAN_SETTINGS, PLANNER_SETTINGS } from './settings';
export { capturingLogger } from './logs';
export { docJsonBlock } from './docs';
export { healthStatus } from './health';
export { wholeModelMetadata } from './oip';
export { serverGeneration } from './sessions';
export type { LogLine } from './logs';
export { ReflectionAnswerError, ReflectionClient } from './reflection';
export type { ReflectionVersion } from './reflection';
