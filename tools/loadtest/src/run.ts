import { planKey } from '@tandem/dp';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { recordReplay, ReplayFormatError, ReplayRecording, type ReplayStageCost } from '@tandem/client-agent';
import { affinityOf, cpuBusySeconds, hasTaskset, launchService, pinProcess, stopServices, type LaunchOptions, type ServiceProcess } from '@tandem/launcher';
import { modelIdOf, readManifest } from '@tandem/model';
import { agentStatus, GenerationOutcome, listPlans, Subjects, type AgentServiceClient, type PlannerServiceClient } from '@tandem/protocol';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { freePort, startNatsServer, type NatsServerHandle } from '@tandem/testkit';
import { sleep } from '@tandem/util';
import { buildTrace, promptPools, type TraceRequest } from './arrivals';
import { agentClient, plannerClient, sendGenerate } from './client';
import { attributeExecutors, executorShares, loadtestExecutorId, MAX_EXECUTORS, type ExecutorShare, type OutcomeSeen } from './executors';
import { gcPausesBetween, scrapeGcPauses, sumGcPauses, type GcPauses } from './gc-pauses';
import { completed, dist, summarize, type Dist, type RequestRecord, type RunStats } from './metrics';
import { predictionErrors, predictionSamples, type PredictionGroup, type PredictionSamples } from './prediction';
import { plannerSloEnv, scaleSlos, ScenarioError, sloScale, type Policy, type Scenario } from './scenario';

/**
 * CPUs: the executor alone on one core (the bottleneck, as in a deployment), everything else on
 * the other. With several executors they all share that core: the server's capacity stays one
 * core, split between them, and the client core stays the clients'.
 */
export const SERVER_CPU = '0';
export const CLIENT_CPU = '1';

export interface LoadtestOptions {
  readonly scenario: Scenario;
  readonly policies: readonly Policy[];
  readonly rates: readonly number[];
  readonly durationS: number;
  readonly warmupS: number;
  /** Seed of the first repeat's arrival traces; repeat r uses seed + r. */
  readonly seed: number;
  /** Runs of the whole sweep, each with fresh services and its own arrival seed (default 1). */
  readonly repeats?: number;
  readonly modelDir: string;
  /** Where the replay recording is written (scenario emulation 'replay'). */
  readonly replayFile?: string;
  /**
   * A recording to replay instead of making one (`tandem loadtest --replay FILE`, scenario
   * emulation 'replay'): two runs then emulate the same devices, stage for stage, so that two
   * versions of the services can be compared on one machine whose speed drifts between runs.
   * It must come from the same model and hold every prompt of the scenario's pools with at
   * least as many tokens as its class generates.
   */
  readonly reuseReplay?: string;
  /** Service logs go here. */
  readonly logDir: string;
  /** An existing NATS server; by default one is started (nats-server must be installed). */
  readonly natsUrl?: string;
  /** Pin with taskset (when it exists). */
  readonly pin: boolean;
  /**
   * Executors to start, 1..MAX_EXECUTORS (default 1), each with its own id, port and advertised
   * address, all pinned to the server core; agents fall back to the first.
   */
  readonly executors?: number;
  /** Keep every request record in the results. */
  readonly keepRecords?: boolean;
  /** Called as requests finish: done and total over the whole run, and what runs now. */
  readonly onProgress?: (done: number, total: number, what: string) => void;
  /** One line of news (stderr). */
  readonly note?: (line: string) => void;
  /**
   * Called after each (policy, rate) cell, before the next starts, with its result, every
   * request record of it (also without keepRecords) and the run so far: to write results as
   * they come. When it throws the run stops with that error.
   */
  readonly onCell?: (result: RateResult, records: readonly RequestRecord[], run: Omit<LoadtestRun, 'results'>) => void;
}

/**
 * The device side of one rate: what the emulation cost and how faithfully it kept the
 * modelled timing. Timing error per completed request with local stages: the client compute
 * the agent measured (the wall time of its chains of local stages, sleeps included) minus the modelled one
 * (recorded uncontended cost × slow-down, over the stages the placement ran locally).
 */
export interface DeviceSide {
  /** CPU the agents' processes used over the rate (from /proc), s, and as a share of one core. */
  readonly agentsCpuS: number;
  readonly agentsCpuUtilisation: number;
  /** CPU of everything on the client core (agents, planner, the harness itself) as a share of one core. */
  readonly clientCoreUtilisation: number;
  /** Actual − modelled client compute per request, ms (null without replay or local stages). */
  readonly timingErrorMs: Dist | null;
  /** The same relative to the modelled time. */
  readonly timingErrorRel: Dist | null;
  /** Generations that failed on a replay miss (a history not in the recording). */
  readonly replayMisses: number;
  /** Reasons the device side, not the server, may have limited this rate (empty: it did not). */
  readonly limitedBy: readonly string[];
}

/**
 * Share of the server core that other work may take (pinned: the core's busy time beyond the
 * executor's own CPU; unpinned: the executor's threads' run-queue wait per second) before the
 * report calls its core contended.
 */
export const SERVER_CONTENDED = 0.1;

/** Thresholds of {@link DeviceSide.limitedBy}. */
export const DEVICE_LIMITS = { timingErrorP99Ms: 5, timingErrorP99Rel: 0.1, clientCoreUtilisation: 0.85 } as const;

/** One policy at one arrival rate. */
export interface RateResult {
  /** Repeat of the sweep (0-based) and its arrival seed. */
  readonly repeat: number;
  readonly seed: number;
  readonly policy: Policy;
  readonly rate: number;
  /**
   * The Unix time (ms) of the trace's start: records' `sentMs` count from it, so a request's
   * tokens can be set beside what other tools logged at the same moments (the services'
   * metrics, system monitors). Absent from runs.json files written before it was kept.
   */
  readonly traceStartUnixMs?: number;
  readonly stats: RunStats;
  /** Executor process CPU (user + system) over the run, s. */
  readonly serverCpuS: number;
  /** serverCpuS per completed request, s (null when nothing completed). */
  readonly serverCpuPerRequestS: number | null;
  /** Executor CPU time over the run's wall time: its utilisation of its core. */
  readonly serverCpuUtilisation: number;
  /**
   * Time the executor's threads waited for a CPU (summed over threads, so it can exceed 1)
   * over the run's wall time (schedstat; null
   * when unreadable). Above {@link SERVER_CONTENDED} its core was shared with other work on
   * the machine, and the server-side figures are the machine's, not the policy's.
   */
  readonly serverRunQueueShare: number | null;
  /**
   * Time the server core (the executor pinned alone to it) was busy with anything but the
   * executor, over the run's wall time: other processes, interrupts, the hypervisor's steal
   * (/proc/stat for that CPU minus the executor's CPU time). Unlike the run-queue wait, the
   * executor's own threads waiting for each other do not count. null when not pinned or unreadable.
   */
  readonly serverCoreOtherShare: number | null;
  /**
   * Garbage-collection pauses of the executors' threads over the run (their /metrics before and
   * after, summed over executors): the event loop's, and the inference thread's, each of which
   * stretches the engine call it falls in. null when not read (absent from older runs.json).
   */
  readonly serverGcPauses?: GcPauses | null;
  /** Sum of the server compute the agents reported, s (cross-check of serverCpuS). */
  readonly reportedServerComputeS: number;
  /** Client-side CPU (agents) over the run, s. */
  readonly agentsCpuS: number;
  readonly deviceSide: DeviceSide;
  /** The planner's prediction error at this rate, per 'device/requestClass' (see prediction.ts). */
  readonly prediction: Readonly<Record<string, PredictionGroup>>;
  /** Its raw signed relative errors, merged over rates by the report (left out of results.json). */
  readonly predictionSamples: Readonly<Record<string, PredictionSamples>>;
  /** The plans at the end of the run: agent → request class → placement. */
  readonly plans: Readonly<Record<string, Readonly<Record<string, string>>>>;
  /**
   * With more than one executor: each executor's requests, goodput and CPU (the totals above
   * are their sums), and how many planned requests no outcome attributed (counted on the
   * first executor; executors.ts). Absent with one executor.
   */
  readonly executors?: readonly ExecutorShare[];
  readonly unattributed?: number;
  readonly records?: readonly RequestRecord[];
}

/** The replay recording a run used. */
export interface RecordingInfo {
  readonly file: string;
  readonly bytes: number;
  readonly prompts: number;
  /** Seconds the recording took; 0 for one an earlier run made (`reused`). */
  readonly recordS: number;
  readonly costs: readonly ReplayStageCost[];
  /** Made by an earlier run and replayed again (LoadtestOptions.reuseReplay). */
  readonly reused?: boolean;
}

export interface LoadtestRun {
  readonly results: readonly RateResult[];
  readonly recording: RecordingInfo | null;
  readonly pinned: boolean;
  readonly warnings: readonly string[];
  readonly stageCount: number;
  /** Executors started per stack (1 unless --executors). */
  readonly executors: number;
}

/** A whole token of the model (every stage's decode pass) as the recording measured it, uncontended, ms. */
export function recordedTokenMs(costs: readonly ReplayStageCost[]): number {
  return costs.reduce((a, c) => a + c.decodeMs, 0);
}

/** Agent id of a device class. */
export const agentId = (device: string): string => `lt-${device}`;

/**
 * A recording made by an earlier run, checked for this one: the same model (ReplayRecording's
 * checks) and every pool prompt recorded with at least the tokens its class generates.
 * @throws ScenarioError naming the file and what is wrong or missing.
 */
function reusedRecording(
  file: string,
  modelDir: string,
  manifest: Awaited<ReturnType<typeof readManifest>>,
  prompts: readonly { readonly ids: readonly number[]; readonly maxNewTokens: number }[],
): RecordingInfo {
  const { nEmbd, vocabSize } = manifest.config;
  let rec: ReplayRecording;
  try {
    rec = ReplayRecording.load(file, { modelId: modelIdOf(modelDir), stageCount: manifest.stages.length, nEmbd, vocabSize }, '--replay');
  } catch (err) {
    throw err instanceof ReplayFormatError ? new ScenarioError(err.message, { cause: err }) : err;
  }
  const recorded = new Map(rec.header.prompts.map((p) => [p.ids.join(','), p.tokens.length]));
  const short = prompts.filter((p) => (recorded.get(p.ids.join(',')) ?? -1) < p.maxNewTokens);
  if (short.length > 0)
    throw new ScenarioError(
      `--replay ${file} must hold every prompt of this scenario's pools with as many tokens as its class generates (record it with the same scenario, seed and preset); ${short.length} of ${prompts.length} are missing or shorter`,
    );
  return { file, bytes: rec.bytes, prompts: rec.header.prompts.length, recordS: 0, costs: rec.header.costs, reused: true };
}

/**
 * Runs the load test: starts NATS (unless given); then for each policy a fresh stack: the
 * executors pinned to CPU 0, the planner with that algorithm and one client-agent per device
 * class pinned to CPU 1 (the harness moves itself there too); waits until every agent
 * follows a plan of that algorithm, warms up, and replays the same arrival trace at each
 * rate, reading each executor's CPU time from /proc before and after each rate.
 * @throws RangeError naming `executors` when it is not an integer in 1..MAX_EXECUTORS.
 */
export async function runLoadtest(o: LoadtestOptions): Promise<LoadtestRun> {
  // The scenario as stated; its SLOs may be scaled by the recording's speed below (sloReferenceTokenMs).
  let s = o.scenario;
  const nExec = o.executors ?? 1;
  if (!Number.isInteger(nExec) || nExec < 1 || nExec > MAX_EXECUTORS)
    throw new RangeError(`loadtest: executors must be an integer in 1..${MAX_EXECUTORS}, given ${String(nExec)}`);
  const executorIds = Array.from({ length: nExec }, (_, i) => loadtestExecutorId(i));
  const warnings: string[] = [];
  const warn = (w: string): void => {
    warnings.push(w);
    o.note?.(`warning: ${w}`);
  };
  const pin = o.pin && hasTaskset();
  if (o.pin && !pin) warn('taskset is not available: the services are not pinned, so the server does not have a core of its own');
  const ownAffinity = pin ? affinityOf(process.pid) : undefined;
  if (pin && !pinProcess(process.pid, CLIENT_CPU)) warn(`could not pin the harness to CPU ${CLIENT_CPU}`);
  const cpus = (c: string): string | undefined => (pin ? c : undefined);

  const manifest = await readManifest(o.modelDir);
  const stageCount = manifest.stages.length;
  const repeats = o.repeats ?? 1;
  const pools = promptPools(s);
  let recording: RecordingInfo | null = null;
  if (s.emulation === 'replay') {
    const prompts = [...pools.values()].flat();
    if (o.reuseReplay) {
      recording = reusedRecording(o.reuseReplay, o.modelDir, manifest, prompts);
      o.note?.(`replaying ${o.reuseReplay} (${recording.prompts} prompts, ${(recording.bytes / 1e6).toFixed(1)} MB): no new recording`);
    } else {
      const file = o.replayFile ?? join(o.logDir, 'replay.bin');
      mkdirSync(dirname(file), { recursive: true });
      o.note?.(`recording ${prompts.length} pool prompts with a one-process run of the model (device stages are replayed from it)`);
      const t0 = performance.now();
      const { header, bytes } = await recordReplay({
        modelDir: o.modelDir,
        modelId: modelIdOf(o.modelDir),
        prompts,
        out: file,
        onProgress: (done, n) => o.onProgress?.(done, n, `recording prompt ${done}/${n}`),
      });
      recording = { file, bytes, prompts: header.prompts.length, recordS: (performance.now() - t0) / 1000, costs: header.costs };
      o.note?.(`recorded ${header.prompts.length} prompts in ${recording.recordS.toFixed(1)} s: ${(bytes / 1e6).toFixed(1)} MB in ${file}`);
    }
    const tokenMs = recordedTokenMs(recording.costs);
    const scale = sloScale(s, tokenMs);
    if (scale !== 1) {
      s = scaleSlos(s, scale);
      o.note?.(
        `SLOs scaled × ${scale.toFixed(3)}: the scenario states them for a whole token of ${s.sloReferenceTokenMs} ms, this machine recorded ${tokenMs.toFixed(2)} ms`,
      );
    }
  }
  const slowdownOf = new Map(s.deviceClasses.map((d) => [d.name, d.slowdown]));
  let nats: NatsServerHandle | undefined;
  // The stack's executors, in id order; the first is every agent's EXECUTOR_ADDR.
  let executors: ServiceProcess[] = [];
  let planner: ServiceProcess | undefined;
  const agents = new Map<string, { proc: ServiceProcess; client: AgentServiceClient }>();
  let pc: PlannerServiceClient | undefined;
  let stopStack = async (): Promise<void> => {};
  const results: RateResult[] = [];
  let outcomeTap: NatsConnection | undefined;
  /** Outcomes heard since the current rate began (several executors only). */
  let outcomes: OutcomeSeen[] = [];
  mkdirSync(o.logDir, { recursive: true });
  try {
    let natsUrl = o.natsUrl;
    if (!natsUrl) {
      nats = await startNatsServer();
      natsUrl = nats.url;
    }
    if (nExec > 1) {
      // The agents' outcomes name the executor each generation ran on (executors.ts).
      outcomeTap = await connect({ servers: natsUrl });
      outcomeTap.subscribe(Subjects.allOutcomes, {
        callback: (err, m) => {
          if (err) return;
          try {
            const x = GenerationOutcome.decode(m.data);
            outcomes.push({
              clientId: x.clientId,
              promptTokens: x.promptTokens,
              newTokens: x.newTokens,
              unixMs: Number(x.unixMs),
              e2eMs: x.e2eMs,
              executorId: x.executorId ?? '',
            });
          } catch {
            // Not an outcome: nothing of ours to attribute by.
          }
        },
      });
    }
    const common = { MODEL_DIR: o.modelDir, NATS_URL: natsUrl, LOG_LEVEL: 'warn' };
    const telemetry = { TELEMETRY_INTERVAL_MS: '500' };
    // A fresh stack per policy: no policy inherits another's executor statistics, agent
    // profiles (measured under the previous policy's load) or plans.
    const startStack = async (policy: Policy): Promise<void> => {
      // Ports picked up front so that all the services start at once.
      const plannerAddr = `127.0.0.1:${await freePort()}`;
      const executorAddrs: string[] = [];
      for (let i = 0; i < nExec; i++) executorAddrs.push(`127.0.0.1:${await freePort()}`);
      const executorAddr = executorAddrs[0];
      // The services get the user's own settings of their variables too (`PLANNER_IDLE_UTILISATION=0 tandem loadtest`).
      const launch = (l: LaunchOptions): Promise<ServiceProcess> => launchService({ ...l, fromShell: true });
      const started: (ServiceProcess | undefined)[] = executorIds.map(() => undefined);
      const execs = executorIds.map((id, i) =>
        launch({
          name: nExec > 1 ? id : 'server-executor',
          app: 'server-executor',
          cpus: cpus(SERVER_CPU),
          // One executor keeps the log's old name.
          logFile: join(o.logDir, nExec > 1 ? `${id}-${policy}.log` : `server-executor-${policy}.log`),
          env: {
            ...common,
            ...telemetry,
            EXECUTOR_ID: id,
            EXECUTOR_ADDR: executorAddrs[i],
            EXECUTOR_ADVERTISE_ADDR: executorAddrs[i],
            EXECUTOR_THREADS: '1',
            EXECUTOR_MAX_SESSIONS: '512',
            EXECUTOR_IDLE_TIMEOUT_MS: String(s.requestTimeoutMs + 10_000),
            // Its /metrics on a free port: the harness reads its garbage-collection pauses per rate.
            EXECUTOR_METRICS_PORT: '0',
          },
        }).then((p) => {
          started[i] = p;
        }),
      );
      const plan = launch({
        name: `planner-${policy}`,
        app: 'planner',
        cpus: cpus(CLIENT_CPU),
        logFile: join(o.logDir, `planner-${policy}.log`),
        env: {
          ...common,
          PLANNER_ADDR: plannerAddr,
          PLANNER_ALGORITHM: policy,
          // A fresh planner per policy, on a nats-server without JetStream: nothing to keep, nor a warning about it.
          PLANNER_STATE_BUCKET: 'off',
          ...plannerSloEnv(s),
        },
      }).then((p) => {
        planner = p;
      });
      const ags = s.deviceClasses.map(async (d) => {
        const proc = await launch({
          name: `agent-${d.name}`,
          app: 'client-agent',
          cpus: cpus(CLIENT_CPU),
          logFile: join(o.logDir, `agent-${d.name}-${policy}.log`),
          env: {
            ...common,
            ...telemetry,
            AGENT_ID: agentId(d.name),
            AGENT_CLASS: d.name,
            AGENT_ADDR: '127.0.0.1:0',
            AGENT_THREADS: '1',
            AGENT_SLOWDOWN: String(d.slowdown),
            AGENT_PRIVATE: String(d.private),
            AGENT_LINK_LATENCY_MS: String(d.link.latencyMs),
            AGENT_LINK_UP_BYTES_PER_MS: String(d.link.upBytesPerMs),
            AGENT_LINK_DOWN_BYTES_PER_MS: String(d.link.downBytesPerMs),
            EXECUTOR_ADDR: executorAddr,
            PLANNER_ADDR: plannerAddr,
            AGENT_DEADLINE_MS: String(s.requestTimeoutMs + 5000),
            AGENT_SHUTDOWN_GRACE_MS: '0',
            AGENT_REPLAY_FILE: recording?.file ?? '',
          },
        });
        agents.set(d.name, { proc, client: agentClient(proc.address) });
      });
      // Wait for every launch (so a failure leaves nothing unaccounted for), then report the first failure.
      const settled = await Promise.allSettled([...execs, plan, ...ags]);
      executors = started.filter((p): p is ServiceProcess => p !== undefined);
      const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
      pc = plannerClient(plannerAddr);
    };
    stopStack = async (): Promise<void> => {
      pc?.close();
      pc = undefined;
      for (const a of agents.values()) a.client.close();
      await stopServices(
        [...[...agents.values()].map((a) => a.proc), planner, ...executors].filter((p): p is ServiceProcess => p !== undefined),
        3500,
      );
      agents.clear();
      planner = undefined;
      executors = [];
    };

    const seeds = Array.from({ length: repeats }, (_, r) => o.seed + r);
    const traces = new Map(seeds.map((seed) => [seed, new Map(o.rates.map((r) => [r, buildTrace(s, r, o.durationS, seed, pools)]))]));
    const total = o.policies.length * [...traces.values()].reduce((a, m) => a + [...m.values()].reduce((b, t) => b + t.length, 0), 0);
    let done = 0;

    for (const [repeat, seed] of seeds.entries()) {
      for (const policy of o.policies) {
        const tag = repeats > 1 ? `repeat ${repeat + 1}/${repeats} ${policy}` : policy;
        o.note?.(`${tag}: starting ${nExec > 1 ? `${nExec} executors` : 'the executor'}, the planner and ${s.deviceClasses.length} client-agents`);
        await startStack(policy);
        const execs = executors;
        const plans0 = pc;
        if (execs.length !== nExec || !plans0) throw new Error('loadtest: startStack resolved without the executors or the planner client'); // never: it sets both
        const execCpu = (): number[] => execs.map((e) => e.cpuSeconds());
        const metricsPorts = execs.map((e) => e.announced.metricsPort).filter((p): p is number => typeof p === 'number' && p > 0);
        /** Every executor's pauses so far; undefined when one cannot be read. */
        const gcPauses = async (): Promise<GcPauses[] | undefined> => {
          if (metricsPorts.length !== execs.length) return undefined;
          const all = await Promise.all(metricsPorts.map((port) => scrapeGcPauses(port)));
          return all.every((p): p is GcPauses => p !== undefined) ? all : undefined;
        };
        const sum = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);
        await waitForPlans(policy, plans0, agents, 60_000);
        o.note?.(`${tag}: every agent follows a ${policy} plan`);
        if (o.warmupS > 0) {
          const warm = buildTrace(s, o.rates[0], o.warmupS, seed + 7919, pools);
          await replay(warm, agents, s.requestTimeoutMs);
        }
        for (const rate of o.rates) {
          const trace = traces.get(seed)?.get(rate);
          if (!trace) throw new Error(`loadtest: no trace for seed ${seed} at ${rate} req/s`); // never: one was built per seed and rate
          const what = `${tag} @ ${rate} req/s`;
          o.onProgress?.(done, total, what);
          const agentCpu = (): number => [...agents.values()].reduce((a, x) => a + x.proc.cpuSeconds(), 0);
          const ownCpu = (): number => {
            const u = process.cpuUsage();
            return (u.user + u.system) / 1e6;
          };
          const agentCpu0 = agentCpu();
          const clientCpu0 = agentCpu0 + (planner?.cpuSeconds() ?? 0) + ownCpu();
          const cpu0 = execCpu();
          const wait0 = sum(execs.map((e) => e.runQueueWaitSeconds()));
          const core0 = cpuBusySeconds(Number(SERVER_CPU));
          const gc0 = await gcPauses();
          const wall0 = performance.now();
          outcomes = [];
          const { records: sent, t0: traceT0 } = await replay(trace, agents, s.requestTimeoutMs, () => {
            done++;
            o.onProgress?.(done, total, what);
          });
          const wallS = (performance.now() - wall0) / 1000;
          const cpuEach = execCpu().map((c, i) => c - cpu0[i]);
          const serverCpuS = sum(cpuEach);
          const serverWaitS = sum(execs.map((e) => e.runQueueWaitSeconds())) - wait0;
          const coreOtherS = cpuBusySeconds(Number(SERVER_CPU)) - core0 - serverCpuS;
          const agentsCpuS = agentCpu() - agentCpu0;
          const gc1 = gc0 && (await gcPauses());
          const serverGcPauses = gc0 && gc1 ? sumGcPauses(gc1.map((p, i) => gcPausesBetween(gc0[i], p))) : null;
          const clientCpuS = agentCpu() + (planner?.cpuSeconds() ?? 0) + ownCpu() - clientCpu0;
          let records: RequestRecord[];
          let unattributed = 0;
          const unixAtT0 = Date.now() - performance.now() + traceT0;
          if (nExec > 1) {
            // Outcomes are published as generations end: wait (a little) for the last ones.
            const planned = sent.filter((r) => (r.planEpoch ?? 0) > 0).length;
            for (let waited = 0; outcomes.length < planned && waited < 2000; waited += 50) await sleep(50);
            ({ records, unmatched: unattributed } = attributeExecutors(sent, outcomes, {
              agentOf: agentId,
              traceStartUnixMs: unixAtT0,
              fallback: executorIds[0],
            }));
          } else {
            records = sent.map((r) => ({ ...r, executorId: executorIds[0] }));
          }
          const stats = summarize(records, o.durationS);
          const samples = predictionSamples(records);
          const plans: Record<string, Record<string, string>> = {};
          for (const p of (await listPlans(plans0).catch(() => undefined))?.plans ?? [])
            plans[p.clientId] = Object.fromEntries(p.classes.map((c) => [c.name, planKey(c)]));
          const result: RateResult = {
            repeat,
            seed,
            policy,
            rate,
            traceStartUnixMs: Math.round(unixAtT0),
            stats,
            serverCpuS,
            serverCpuPerRequestS: stats.completed > 0 ? serverCpuS / stats.completed : null,
            serverCpuUtilisation: serverCpuS / wallS,
            serverRunQueueShare: Number.isFinite(serverWaitS) ? serverWaitS / wallS : null,
            serverCoreOtherShare: pin && Number.isFinite(coreOtherS) ? Math.max(0, coreOtherS) / wallS : null,
            serverGcPauses,
            reportedServerComputeS: records.reduce((a, r) => a + (r.serverComputeMs ?? 0), 0) / 1000,
            agentsCpuS,
            plans,
            deviceSide: deviceSide(records, recording?.costs ?? null, slowdownOf, agentsCpuS, clientCpuS, wallS),
            prediction: predictionErrors(samples),
            predictionSamples: samples,
            ...(nExec > 1
              ? { executors: executorShares(records, executorIds, new Map(executorIds.map((id, i) => [id, cpuEach[i]])), stats.durationS, wallS), unattributed }
              : {}),
            ...(o.keepRecords ? { records } : {}),
          };
          results.push(result);
          o.onCell?.(result, records, { recording, pinned: pin, warnings, stageCount, executors: nExec });
          // Let the executor's load report fall back before the next rate.
          if (rate !== o.rates[o.rates.length - 1]) await sleep(1000);
        }
        await stopStack();
      }
    }
    o.onProgress?.(total, total, 'done');
    return { results, recording, pinned: pin, warnings, stageCount, executors: nExec };
  } finally {
    await stopStack();
    await outcomeTap?.close().catch(() => undefined);
    await nats?.stop();
    if (ownAffinity) pinProcess(process.pid, ownAffinity);
  }
}

/**
 * The device side of one rate (see {@link DeviceSide}); `costs` null without replay. The
 * modelled client compute of a request is, over the stages its placement ran locally,
 * slow-down × (prefill ms per token × prompt tokens + decode ms × (tokens − 1)), the head's
 * prefill being one row (decode ms): it runs on the prompt's last position only.
 */
export function deviceSide(
  records: readonly RequestRecord[],
  costs: readonly ReplayStageCost[] | null,
  slowdownOf: ReadonlyMap<string, number>,
  agentsCpuS: number,
  clientCpuS: number,
  wallS: number,
): DeviceSide {
  const abs: number[] = [];
  const rel: number[] = [];
  if (costs) {
    for (const r of records) {
      if (!completed(r) || r.placement === undefined || !r.placement.includes('C') || r.clientComputeMs === undefined) continue;
      const slow = slowdownOf.get(r.device) ?? 1;
      // A phased generation's placement is `prefill/decode`: each phase's device stages are its own.
      const [prefillPlacement, decodePlacement = prefillPlacement] = r.placement.split('/');
      let model = 0;
      for (let st = 0; st < prefillPlacement.length; st++) {
        // The head's prefill runs on the prompt's last position only: one row, like a decode step.
        if (prefillPlacement[st] === 'C')
          model += slow * (st === prefillPlacement.length - 1 ? costs[st].decodeMs : costs[st].prefillMsPerToken * r.promptTokens);
        if (decodePlacement[st] === 'C') model += slow * costs[st].decodeMs * Math.max(0, r.tokenMs.length - 1);
      }
      abs.push(r.clientComputeMs - model);
      if (model > 0) rel.push((r.clientComputeMs - model) / model);
    }
  }
  const replayMisses = records.filter((r) => !completed(r) && /replay miss/.test(r.error ?? '')).length;
  const timingErrorMs = abs.length ? dist(abs) : null;
  const timingErrorRel = rel.length ? dist(rel) : null;
  const clientCoreUtilisation = clientCpuS / Math.max(wallS, 1e-9);
  const limitedBy: string[] = [];
  const L = DEVICE_LIMITS;
  const p99Ms = timingErrorMs?.p99 ?? 0;
  const p99Rel = timingErrorRel?.p99 ?? 0;
  if (p99Ms > L.timingErrorP99Ms && p99Rel > L.timingErrorP99Rel) {
    limitedBy.push(`emulated devices ran late: p99 timing error ${p99Ms.toFixed(1)} ms (${(p99Rel * 100).toFixed(0)} % of the modelled time)`);
  }
  if (clientCoreUtilisation > L.clientCoreUtilisation)
    limitedBy.push(`the client core was ${(clientCoreUtilisation * 100).toFixed(0)} % busy (agents, planner, harness)`);
  if (replayMisses > 0) limitedBy.push(`${replayMisses} replay misses`);
  return {
    agentsCpuS,
    agentsCpuUtilisation: agentsCpuS / Math.max(wallS, 1e-9),
    clientCoreUtilisation,
    timingErrorMs,
    timingErrorRel,
    replayMisses,
    limitedBy,
  };
}

/** Waits until the planner has a plan of `policy` for every agent and every agent follows it. */
async function waitForPlans(
  policy: Policy,
  pc: PlannerServiceClient,
  agents: ReadonlyMap<string, { proc: ServiceProcess; client: AgentServiceClient }>,
  timeoutMs: number,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    try {
      const { plans } = await listPlans(pc);
      const missing: string[] = [];
      for (const [device, a] of agents) {
        const plan = plans.find((p) => p.clientId === agentId(device));
        if (!plan || plan.algorithm !== policy) {
          missing.push(`${device}: no ${policy} plan yet`);
          continue;
        }
        const st = await agentStatus(a.client);
        if (st.planEpoch < plan.epoch) missing.push(`${device}: follows epoch ${st.planEpoch}, plan is ${plan.epoch}`);
      }
      if (missing.length === 0) return;
      last = missing.join('; ');
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > until) throw new Error(`the agents did not get ${policy} plans within ${timeoutMs} ms (${last})`);
    await sleep(100);
  }
}

/**
 * Sends every request of `trace` at its time (open loop) to its device class's agent; resolves
 * with every record and the trace's start (performance.now(), records' sentMs are from it).
 */
async function replay(
  trace: readonly TraceRequest[],
  agents: ReadonlyMap<string, { client: AgentServiceClient }>,
  timeoutMs: number,
  onDone?: () => void,
): Promise<{ records: RequestRecord[]; t0: number }> {
  const t0 = performance.now();
  const pending: Promise<RequestRecord>[] = [];
  for (const req of trace) {
    const wait = t0 + req.atMs - performance.now();
    if (wait > 1) await sleep(wait);
    const agent = agents.get(req.device);
    if (!agent) throw new RangeError(`replay: the trace's device class '${req.device}' has no agent, given agents ${[...agents.keys()].join(', ')}`);
    const p = sendGenerate(agent.client, req, t0, timeoutMs);
    if (onDone) void p.then(onDone);
    pending.push(p);
  }
  return { records: await Promise.all(pending), t0 };
}
