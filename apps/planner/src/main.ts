import { ModelFormatError, modelIdOf, readManifest, stageKvBytesPerToken } from '@tandem/model';
import { createLogger, hostOf, keepaliveFrom, loadServerSecurity, natsAuthFrom, onShutdownSignal, runMain } from '@tandem/service-kit';
import { Calibrator } from './calibration';
import { loadConfig } from './config';
import { PlannerDashboard } from './dashboard';
import { PlanMaker } from './plan-maker';
import { STATE_OFF } from './plan-state';
import { PlannerServer } from './planner-server';

/** Composition root of the planner. */
export async function main(): Promise<void> {
  const config = loadConfig(process.env);
  // Certificates and tokens first: a bad file is a config error (exit 2) at once.
  const security = loadServerSecurity(config);
  const log = createLogger({ name: 'planner', level: config.LOG_LEVEL });
  const manifest = await readManifest(config.MODEL_DIR);
  const maker = new PlanMaker({
    stages: manifest.stages.map((s) => ({
      name: s.name,
      inBytesPerToken: s.inBytesPerToken,
      kvBytesPerToken: stageKvBytesPerToken(s.kind, manifest.config.nEmbd),
    })),
    classes: config.PLANNER_REQUEST_CLASSES,
    slaOverrides: config.PLANNER_SLA_OVERRIDES,
    algorithm: config.PLANNER_ALGORITHM,
    hysteresis: config.PLANNER_HYSTERESIS,
    entryMargin: config.PLANNER_ENTRY_MARGIN,
    phasedMinSaving: config.PLANNER_PHASED_MIN_SAVING,
    slaMargin: config.PLANNER_SLA_MARGIN,
    resolutionMs: config.PLANNER_RESOLUTION_MS,
    maxUtilisation: config.PLANNER_MAX_UTILISATION,
    serverLatency: config.PLANNER_SERVER_LATENCY,
    serverEntryMs: config.PLANNER_SERVER_ENTRY_MS,
    overload: config.PLANNER_SHED ? 'hold' : 'relieve',
    shedMaxSlowdown: config.PLANNER_SHED_MAX_SLOWDOWN,
  });
  const calibrator = new Calibrator({
    learn: config.PLANNER_LEARN,
    target: config.PLANNER_SLO_TARGET,
    relaxMargin: config.PLANNER_SLO_RELAX_MARGIN,
    halfLife: config.PLANNER_OUTCOME_HALF_LIFE,
    minOutcomes: config.PLANNER_OUTCOME_MIN,
    step: config.PLANNER_SAFETY_STEP,
    floor: config.PLANNER_SAFETY_FLOOR,
    dwellMs: config.PLANNER_SAFETY_DWELL_MS,
    relaxDwellMs: config.PLANNER_SAFETY_RELAX_MS,
    materialChange: config.PLANNER_CALIBRATION_CHANGE,
    byKind: config.PLANNER_CALIBRATE_BY_KIND,
  });
  const server = new PlannerServer({
    maker,
    calibrator,
    shedding: { enabled: config.PLANNER_SHED, above: config.PLANNER_SHED_ABOVE, below: config.PLANNER_SHED_BELOW, dwellMs: config.PLANNER_SHED_DWELL_MS },
    log,
    address: config.PLANNER_ADDR,
    natsUrl: config.NATS_URL,
    natsAuth: natsAuthFrom(config),
    modelId: modelIdOf(config.MODEL_DIR),
    clientTtlMs: config.PLANNER_CLIENT_TTL_MS,
    debounceMs: config.PLANNER_DEBOUNCE_MS,
    idleUtilisation: config.PLANNER_IDLE_UTILISATION,
    utilisationSmoothing: config.PLANNER_UTILISATION_SMOOTHING,
    replanThreshold: config.PLANNER_REPLAN_THRESHOLD,
    predictionPushThreshold: config.PLANNER_PREDICTION_PUSH_THRESHOLD,
    sliceMs: config.PLANNER_SLICE_MS,
    security,
    keepalive: keepaliveFrom(config),
    metricsPort: config.PLANNER_METRICS_PORT,
    state: config.PLANNER_STATE_BUCKET === STATE_OFF ? undefined : { bucket: config.PLANNER_STATE_BUCKET, leaseMs: config.PLANNER_LEADER_LEASE_MS },
  });
  // Last line of defence: the planner's own handlers catch what telemetry and planning throw
  // (planner-server.ts); anything that still escapes is logged and the planner keeps serving.
  process.on('uncaughtException', (err) => log.error({ err }, 'uncaught exception; the planner carries on'));
  process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled rejection; the planner carries on'));
  const { port } = await server.start();
  const dashboard =
    config.PLANNER_DASHBOARD_PORT === undefined
      ? undefined
      : new PlannerDashboard({
          source: server,
          info: {
            modelId: modelIdOf(config.MODEL_DIR),
            algorithm: config.PLANNER_ALGORITHM,
            stages: manifest.stages.map((s) => s.name),
            classes: maker.opts.classes,
            attainmentTarget: config.PLANNER_SLO_TARGET,
          },
          log,
          host: hostOf(config.PLANNER_ADDR),
          port: config.PLANNER_DASHBOARD_PORT,
        });
  const dashboardPort = await dashboard?.start().catch(async (err: unknown) => {
    await server.stop();
    throw err;
  });
  process.stdout.write(
    `${JSON.stringify({ event: 'listening', service: 'planner', port, metricsPort: server.metrics.port, dashboardPort, dashboardUrl: dashboard?.url })}\n`,
  );
  onShutdownSignal(async () => {
    await dashboard?.stop();
    await server.stop();
  });
}

// Exit 2 on bad configuration (environment, certificates, NATS credentials, MODEL_DIR), 1 otherwise.
if (require.main === module) runMain('planner', main, [ModelFormatError]);
