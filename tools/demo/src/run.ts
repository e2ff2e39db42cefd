import * as grpc from '@grpc/grpc-js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { startService, stopServices, type ServiceProcess } from '@tandem/launcher';
import type { Manifest } from '@tandem/model';
import { agentStatus, AgentServiceClient, generateVia, listPlans, ListPlansResponse, PlannerServiceClient, type GenerationResult } from '@tandem/protocol';
import { clientOptions, loadClientSecurity, type ClientSecurity } from '@tandem/service-kit';
import { sleep } from '@tandem/util';
import { DEMO_DEVICES, type DemoDevice } from './devices';
import type { DemoNats } from './nats';
import { agentSpec, executorSpec, makeDemoSecurity, plannerSpec, type DemoSecurity } from './stack';

/** The demo was stopped by a signal. */
export class DemoInterrupted extends Error {
  override name = 'DemoInterrupted';
  constructor(readonly signal: string) {
    super(`interrupted by ${signal}`);
  }
}

export interface DemoOptions {
  readonly modelDir: string;
  readonly manifest: Manifest;
  /** The preset the model was made from, or undefined for a --model directory. */
  readonly preset: string | undefined;
  readonly nats: DemoNats;
  readonly prompt: string;
  readonly tokens: number;
  readonly runsPerAgent: number;
  readonly keepLogs: boolean;
  /** Bound on the wait for every agent's first plan. */
  readonly planWaitMs: number;
  /** Aborted on SIGINT/SIGTERM: the demo stops its services and rejects with DemoInterrupted. */
  readonly signal: AbortSignal;
  /** performance.now() when the command started; the report's elapsedMs counts from it. */
  readonly startedAt: number;
  /** Progress lines (stderr). */
  readonly progress: (line: string) => void;
  /** TLS (mTLS to the executor and planner) and bearer tokens on every port (default true); false = plaintext. */
  readonly tls?: boolean;
  /**
   * Keep the services running after the generations, for other clients (examples/python), until
   * SIGINT/SIGTERM (then they stop and runDemo resolves with the report) or a service dies (it
   * rejects). A progress line names every address and the credentials' files.
   */
  readonly stay?: boolean;
}

/** One generation as the demo reports it. */
export interface DemoRun {
  readonly run: number;
  readonly planEpoch: number;
  readonly placement: string;
  readonly requestClass: string;
  readonly promptTokens: number;
  readonly ids: number[];
  readonly text: string;
  readonly ttftMs: number;
  readonly totalMs: number;
  /** 0 when the generation had no SLA (no plan yet). */
  readonly slaMs: number;
  /** Whether totalMs <= slaMs; null without an SLA. */
  readonly slaMet: boolean | null;
  readonly serverComputeMs: number;
  readonly clientComputeMs: number;
}

/** One emulated device (its DemoDevice fields, its id as `device`) and its generations. */
export interface DemoAgentReport extends Omit<DemoDevice, 'id'> {
  readonly device: string;
  readonly runs: DemoRun[];
}

export interface DemoServiceReport {
  readonly name: string;
  readonly app: string;
  readonly pid: number;
  readonly port: number;
}

export interface DemoReport {
  readonly model: { readonly preset: string | null; readonly dir: string; readonly stages: number; readonly stageNames: string[] };
  readonly nats: { readonly url: string; readonly startedHere: boolean };
  readonly prompt: string;
  readonly tokens: number;
  readonly services: DemoServiceReport[];
  readonly agents: DemoAgentReport[];
  /** The planner's ListPlans answer at the end, as protobuf JSON. */
  readonly plans: unknown;
  /** Whether every generation produced the same ids (greedy decoding does not depend on the placement). */
  readonly identicalOutputs: boolean;
  /** Services that ignored SIGTERM for 5 s and were killed. */
  readonly killed: string[];
  /** Where the service logs are, or null when they were removed. */
  readonly logDir: string | null;
  /** From the command's start (model, NATS, services, generations, shutdown). */
  readonly elapsedMs: number;
}

/**
 * Rejects when the demo is interrupted or a service dies, so no wait outlives either.
 * `race` wraps every await of the run.
 */
class Guard {
  private fail!: (err: Error) => void;
  private readonly failed: Promise<never>;
  private stopping = false;

  constructor(signal: AbortSignal) {
    this.failed = new Promise<never>((_, reject) => {
      this.fail = reject;
    });
    this.failed.catch(() => undefined);
    const onAbort = (): void => this.fail(new DemoInterrupted(String(signal.reason ?? 'a signal')));
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  }

  watch(p: ServiceProcess): void {
    void p.listening
      .then(() => p.exited)
      .then(
        () => {
          if (this.stopping) return;
          const { exitCode, signalCode } = p.child;
          const tail = p.tail(5);
          this.fail(new Error(`${p.name} exited unexpectedly (${signalCode ?? `code ${exitCode}`}); log ${p.options.logFile}${tail ? `:\n${tail}` : ''}`));
        },
        () => undefined,
      );
  }

  race<T>(p: Promise<T>): Promise<T> {
    return Promise.race([p, this.failed]);
  }

  stop(): void {
    this.stopping = true;
  }
}

/** The --stay line: where each service listens and how to call it. */
function stayLine(executor: string, planner: string, agents: readonly string[], modelDir: string, security: DemoSecurity | undefined): string {
  const creds = security
    ? `TLS: --tls-ca ${security.certs.caCert} --tls-cert ${security.certs.clientCert} --tls-key ${security.certs.clientKey}; ` +
      `tokens ('TOKEN CLIENT_ID' lines, '*' = operator) in ${security.tokensFile}`
    : 'plaintext, no tokens';
  return `--stay: services up until Ctrl-C (then they stop and the report follows): server-executor ${executor}, planner ${planner}, agents ${agents.join(', ')}; model ${modelDir}; ${creds}`;
}

/** Polls every agent's GetStatus until each follows a plan (epoch > 0), with a progress line per change. */
async function waitForPlans(agents: { device: DemoDevice; client: AgentServiceClient }[], opts: DemoOptions, guard: Guard): Promise<void> {
  const until = Date.now() + opts.planWaitMs;
  let last = '';
  for (;;) {
    const statuses = await guard.race(Promise.all(agents.map((a) => agentStatus(a.client).catch(() => undefined))));
    const have = agents.filter((_, i) => (statuses[i]?.planEpoch ?? 0) > 0).map((a) => a.device.id);
    const line = `waiting for plans: ${have.length}/${agents.length} agents have one${have.length ? ` (${have.join(', ')})` : ''}`;
    if (line !== last) {
      opts.progress(line);
      last = line;
    }
    if (have.length === agents.length) return;
    if (Date.now() > until) {
      const missing = agents.filter((a) => !have.includes(a.device.id)).map((a) => a.device.id);
      throw new Error(`no plan reached ${missing.join(', ')} within ${opts.planWaitMs} ms: see the planner's and agents' logs`);
    }
    await guard.race(sleep(200));
  }
}

function toRun(run: number, g: GenerationResult): DemoRun {
  const s = g.summary;
  return {
    run,
    planEpoch: s.planEpoch,
    placement: s.placement,
    requestClass: s.requestClass,
    promptTokens: s.promptTokens,
    ids: s.ids,
    text: s.text,
    ttftMs: s.ttftMs,
    totalMs: s.totalMs,
    slaMs: s.slaMs,
    slaMet: s.slaMs > 0 ? s.totalMs <= s.slaMs : null,
    serverComputeMs: s.serverComputeMs,
    clientComputeMs: s.clientComputeMs,
  };
}

/**
 * Runs the demo: starts the server-executor and the planner, then one client-agent per
 * emulated device, waits for their plans, runs `runsPerAgent` generations per agent
 * through its Generate API, and stops every service. Services are always stopped, on
 * success, error or interruption.
 */
export async function runDemo(opts: DemoOptions): Promise<DemoReport> {
  const logDir = mkdtempSync(path.join(tmpdir(), 'tandem-demo-'));
  opts.progress(`service logs: ${logDir}${opts.keepLogs ? '' : ' (removed at the end unless something fails; --keep-logs keeps them)'}`);
  const procs: ServiceProcess[] = [];
  const start = (o: Parameters<typeof startService>[0]): ServiceProcess => {
    const p = startService({ ...o, logFile: path.join(logDir, `${o.name}.log`) });
    procs.push(p);
    guard.watch(p);
    return p;
  };
  const guard = new Guard(opts.signal);
  let security: DemoSecurity | undefined;
  let client: ClientSecurity | undefined;
  if (opts.tls !== false) {
    security = makeDemoSecurity(path.join(logDir, 'tls'));
    // The demo's own calls: TLS trusting the demo CA, with the client certificate and the operator token.
    client = loadClientSecurity({
      caFile: security.certs.caCert,
      certFile: security.certs.clientCert,
      keyFile: security.certs.clientKey,
      token: security.operatorToken,
    });
    opts.progress(`TLS on every port (mTLS and tokens on the executor and the planner): CA, certificates and tokens in ${path.join(logDir, 'tls')}`);
  }
  const stack = { modelDir: opts.modelDir, natsUrl: opts.nats.url, security, natsEnv: (id: string) => opts.nats.envFor(id) };
  const creds = (): grpc.ChannelCredentials => client?.credentials ?? grpc.credentials.createInsecure();
  const clients: { close(): void }[] = [];
  let collected: Omit<DemoReport, 'killed' | 'logDir' | 'elapsedMs'>; // set by the try block, which otherwise throws
  let killed: string[] = [];
  let failed = false;
  try {
    opts.progress('starting the server-executor and the planner');
    const executor = start(executorSpec(stack));
    const planner = start(plannerSpec(stack));
    await guard.race(Promise.all([executor.listening, planner.listening]));
    opts.progress(
      `server-executor at ${executor.address}, planner at ${planner.address}; starting ${DEMO_DEVICES.length} client-agents (each profiles its stages)`,
    );
    const dashboardUrl = typeof planner.announced.dashboardUrl === 'string' ? planner.announced.dashboardUrl : undefined;
    if (dashboardUrl) opts.progress(`planner dashboard (live while the demo runs): ${dashboardUrl}`);
    const agentProcs = DEMO_DEVICES.map((d) => start(agentSpec(stack, d, executor.address, planner.address)));
    await guard.race(Promise.all(agentProcs.map((p) => p.listening)));
    opts.progress(`agents listening: ${DEMO_DEVICES.map((d, i) => `${d.id} at ${agentProcs[i].address}`).join(', ')}`);

    const agents = DEMO_DEVICES.map((device, i) => {
      const c = new AgentServiceClient(agentProcs[i].address, creds(), clientOptions(client));
      clients.push(c);
      return { device, client: c, runs: [] as DemoRun[] };
    });
    const plannerClient = new PlannerServiceClient(planner.address, creds(), clientOptions(client));
    clients.push(plannerClient);

    await waitForPlans(agents, opts, guard);

    // Round-robin, so telemetry from one run can reach the planner before the agent's next.
    for (let run = 1; run <= opts.runsPerAgent; run++) {
      for (const a of agents) {
        const g = await guard.race(
          generateVia(a.client, { input: { $case: 'prompt', value: opts.prompt }, maxNewTokens: opts.tokens, placement: '' }, 120_000, opts.signal).catch(
            (e: Partial<grpc.ServiceError>) => {
              throw e.code === undefined ? e : new Error(`Generate failed: ${grpc.status[e.code] ?? e.code}: ${e.details || e.message}`);
            },
          ),
        );
        const r = toRun(run, g);
        a.runs.push(r);
        opts.progress(`${a.device.id} run ${run}: ${r.placement} (epoch ${r.planEpoch}), ${Math.round(r.totalMs)} ms${r.slaMs ? ` vs SLA ${r.slaMs} ms` : ''}`);
      }
    }
    const plans = ListPlansResponse.toJSON(await guard.race(listPlans(plannerClient, 5000)));
    const allIds = agents.flatMap((a) => a.runs.map((r) => r.ids.join(',')));
    collected = {
      model: { preset: opts.preset ?? null, dir: opts.modelDir, stages: opts.manifest.stages.length, stageNames: opts.manifest.stages.map((s) => s.name) },
      nats: { url: opts.nats.url, startedHere: opts.nats.startedHere },
      prompt: opts.prompt,
      tokens: opts.tokens,
      services: procs.map((p) => ({ name: p.name, app: p.options.app, pid: p.pid, port: p.port })),
      agents: agents.map(({ device: { id, ...device }, runs }) => ({ device: id, ...device, runs })),
      plans,
      identicalOutputs: new Set(allIds).size === 1,
    };
    if (opts.stay) {
      if (dashboardUrl) opts.progress(`--stay: the planner dashboard stays live at ${dashboardUrl}`);
      opts.progress(
        stayLine(
          executor.address,
          planner.address,
          DEMO_DEVICES.map((d, i) => `${d.id} ${agentProcs[i].address}`),
          opts.modelDir,
          security,
        ),
      );
      // Until interrupted (the services then stop and the report follows) or a service dies (the guard rejects).
      await guard.race(new Promise<never>(() => undefined)).catch((err: unknown) => {
        if (!(err instanceof DemoInterrupted)) throw err;
      });
    }
  } catch (err) {
    failed = !(err instanceof DemoInterrupted);
    throw err;
  } finally {
    guard.stop();
    for (const c of clients) c.close();
    if (procs.length) opts.progress(`stopping ${procs.length} services (SIGTERM; SIGKILL after 5 s)`);
    killed = await stopServices(procs);
    if (killed.length) opts.progress(`killed after 5 s: ${killed.join(', ')}`);
    if (!failed && !opts.keepLogs) rmSync(logDir, { recursive: true, force: true });
    else opts.progress(`service logs kept in ${logDir}`);
  }
  return { ...collected, killed, logDir: opts.keepLogs ? logDir : null, elapsedMs: performance.now() - opts.startedAt };
}
