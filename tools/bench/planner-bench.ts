/**
 * Planner scale benchmark (a script, not a test): one real planner (in this process, on a
 * real nats-server started here) planning N clients, with the telemetry published by a
 * separate process so that this process's CPU is the planner's, and health probed from a third.
 *
 *   npx tsx tools/bench/planner-bench.ts [--clients 10000] [--steady-s 20] [--passes 3] [--executors 1] [--slice-ms N] [--source]
 *
 * The planner runs as deployed: compiled by tsc (tools/scripts/build.mjs, built here into a
 * temporary directory and removed after), libraries included, not through tsx's on-the-fly
 * transform (cross-module getters, name helpers per closure). tsx maps `@tandem/*` imports to
 * the TypeScript sources by the repository's tsconfig paths, even from compiled files, so the
 * bench runs itself again under tools/bench/tsconfig.compiled.json (no paths: imports resolve
 * through node_modules, the compiled planner's to its compiled libraries). `--source` runs it
 * from the TypeScript sources instead.
 *
 * Prints, for the re-planning rule (re-plan what changed materially, in slices) and in the
 * same run for the old rule (every load report re-plans every client, threshold 0):
 * - full re-plan: time of one pass over every client after a material load change;
 * - steady state: planner CPU (fraction of one core) with one load report a second that
 *   moves nothing materially (±0.5 % noise), and with, in addition, every client
 *   re-publishing its profile every 10 s (N/10 profiles a second);
 * - grpc.health.v1 Check latency p50 / p99 / max, probed back to back every 5 ms from another
 *   process (as a kubelet or load balancer probes).
 * With `--executors N` (N ≥ 2), a third row: the same rule with N executors of the same speed
 * reporting, each advertising an address, so every client is assigned one of them and priced
 * on each (docs/planner.md, "Several executors").
 */
import { spawn, spawnSync, type ChildProcessByStdio } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { connect } from '@nats-io/transport-node';
import type * as Planner from '@tandem/planner';
import { ClientProfile, HealthClient, ServerLoad, Subjects } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { clientProfile, PLAN_SETTINGS, PLANNER_SETTINGS, serverLoad, startNatsServer } from '@tandem/testkit';
import { quantile, seededRandom, sleep } from '@tandem/util';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

/** The `small` preset's 14 stages (d = 256). */
const STAGES = ['embed', ...Array.from({ length: 6 }, (_, b) => [`block.${b}.attn`, `block.${b}.mlp`]).flat(), 'head'].map((name, i) => ({
  name,
  inBytesPerToken: i === 0 ? 8 : 1024,
}));
const SERVER_MS = STAGES.map((s) => (s.name === 'head' ? 1.2 : s.name === 'embed' ? 0.05 : 0.25));

const rng = seededRandom;

type PlannerModule = Pick<typeof Planner, 'DEFAULT_CLASSES' | 'PlanMaker' | 'PlannerServer'>;

/**
 * The planner's classes, compiled as deployed (into a temporary directory inside the
 * repository, which build.mjs requires; `cleanup` removes it) or, with `--source`, from the
 * TypeScript sources.
 */
/** The tsconfig without paths under which the compiled planner loads its compiled libraries. */
const COMPILED_TSCONFIG = join(__dirname, 'tsconfig.compiled.json');

function loadPlanner(): { planner: PlannerModule; what: string; cleanup: () => void } {
  if (process.argv.includes('--source'))
    return { planner: require('@tandem/planner') as PlannerModule, what: 'from the TypeScript sources (tsx)', cleanup: () => undefined };
  const root = join(__dirname, '../..');
  const out = mkdtempSync(join(root, '.bench-build-'));
  const cleanup = (): void => rmSync(out, { recursive: true, force: true });
  process.stderr.write('  building the services with tsc (tools/scripts/build.mjs) …\n');
  const built = spawnSync(process.execPath, [join(root, 'tools/scripts/build.mjs'), '--out', out], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (built.status !== 0) {
    cleanup();
    throw new Error(`build.mjs failed (exit ${built.status ?? built.signal}); run with --source to bench the TypeScript sources`);
  }
  const src = join(out, 'apps/planner/src');
  const planner: PlannerModule = {
    ...(require(join(src, 'config.js')) as Pick<PlannerModule, 'DEFAULT_CLASSES'>),
    ...(require(join(src, 'plan-maker.js')) as Pick<PlannerModule, 'PlanMaker'>),
    ...(require(join(src, 'planner-server.js')) as Pick<PlannerModule, 'PlannerServer'>),
  };
  return { planner, what: 'compiled by tsc, as deployed', cleanup };
}

function profileOf(i: number, noise: number, rnd: () => number): ClientProfile {
  const r = rng(i + 1);
  const slowdown = 2 + r() * 22;
  const latencyMs = 1 + r() * 40;
  const jitter = (): number => 1 + (rnd() - 0.5) * 2 * noise;
  return clientProfile({
    clientId: `c${i}`,
    clientClass: ['laptop', 'phone', 'iot'][i % 3],
    modelId: 'bench',
    stages: STAGES.map((_, stage) => ({
      stage,
      prefillMsPerToken: (SERVER_MS[stage] * slowdown * jitter()) / 8,
      decodeMs: SERVER_MS[stage] * slowdown * jitter(),
      samples: 5,
    })),
    uplink: { latencyMs, bytesPerMs: 1000 + r() * 10_000 },
    downlink: { latencyMs, bytesPerMs: 5000 + r() * 50_000 },
  });
}

/** Executor k's id: 'bench' for the first (as before several executors), then 'bench-1', …. */
const executorId = (k: number): string => (k === 0 ? 'bench' : `bench-${k}`);

function loadOf(utilisation: number, noise: number, rnd: () => number, k = 0, executors = 1): ServerLoad {
  const jitter = (): number => 1 + (rnd() - 0.5) * 2 * noise;
  return serverLoad({
    serverId: executorId(k),
    // With several executors each advertises an address (one alone advertises none, as before).
    ...(executors > 1 ? { address: `10.0.0.${k + 1}:50051` } : {}),
    modelId: 'bench',
    utilisation: utilisation * jitter(),
    stages: SERVER_MS.map((ms, stage) => ({ stage, prefillMsPerToken: (ms * jitter()) / 8, decodeMs: ms * jitter(), samples: 5 })),
  });
}

/** Publisher process: reads one JSON command per line, answers `done` when it finished. */
async function publisher(url: string): Promise<void> {
  const nc = await connect({ servers: url });
  const rnd = rng(99);
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    const cmd = JSON.parse(line) as {
      op: 'profiles' | 'load' | 'steady';
      clients: number;
      executors?: number;
      utilisation?: number;
      seconds?: number;
      profilePeriodS?: number;
    };
    const executors = cmd.executors ?? 1;
    const loads = (noise: number): void => {
      for (let k = 0; k < executors; k++)
        nc.publish(Subjects.serverLoad(executorId(k)), ServerLoad.encode(loadOf(cmd.utilisation ?? 0.2, noise, rnd, k, executors)).finish());
    };
    if (cmd.op === 'profiles') {
      for (let i = 0; i < cmd.clients; i++) nc.publish(Subjects.clientProfile(`c${i}`), ClientProfile.encode(profileOf(i, 0, rnd)).finish());
    } else if (cmd.op === 'load') {
      loads(0);
    } else {
      // One load report a second with ±0.5 % noise; profiles (±0.5 %) spread evenly over each period.
      const until = Date.now() + (cmd.seconds ?? 10) * 1000;
      let next = 0;
      const perTick = cmd.profilePeriodS ? cmd.clients / (cmd.profilePeriodS * 10) : 0;
      let debt = 0;
      for (let tick = 0; Date.now() < until; tick++) {
        if (tick % 10 === 0) loads(0.005);
        debt += perTick;
        for (; debt >= 1; debt--) {
          nc.publish(Subjects.clientProfile(`c${next}`), ClientProfile.encode(profileOf(next, 0.005, rnd)).finish());
          next = (next + 1) % cmd.clients;
        }
        await sleep(100);
      }
    }
    await nc.flush();
    process.stdout.write('done\n');
  }
  await nc.close();
}

/**
 * Health prober process: probes `addr` as {@link prober} does, says `ready` after its first
 * answer, and on a line on stdin prints the latencies (one JSON line) and exits. A probe from
 * another process, as a kubelet's or a load balancer's is: run in the planner's own process, each
 * call's client side also waited for the planner's slices.
 */
async function proberProcess(addr: string): Promise<void> {
  const p = prober(addr);
  while (p.count() === 0) await sleep(5);
  process.stdout.write('ready\n');
  // A line, or the end of stdin (the bench gone): either ends it.
  await Promise.race([once(process.stdin, 'data'), once(process.stdin, 'end')]);
  process.stdout.write(`${JSON.stringify(p.stop())}\n`);
  process.exit(0);
}

/** This script again in a child process in `role` (--publish or --probe) with `arg`: its stdin, and its stdout line by line. */
function spawnRole(role: '--publish' | '--probe', arg: string): { child: ChildProcessByStdio<Writable, Readable, null>; lines: AsyncIterator<string> } {
  const child = spawn(process.execPath, ['--require', 'tsx/cjs', __filename, role, arg], { stdio: ['pipe', 'pipe', 'inherit'] });
  return { child, lines: createInterface({ input: child.stdout })[Symbol.asyncIterator]() };
}

/** Starts {@link proberProcess} on `addr` and waits until it probes; `stop` gives its latencies. */
async function externalProber(addr: string): Promise<{ stop: () => Promise<number[]> }> {
  const { child, lines } = spawnRole('--probe', addr);
  const ready = await lines.next();
  if (ready.done || ready.value !== 'ready') throw new Error(`the health prober did not start (said ${JSON.stringify(ready.value)})`);
  return {
    stop: async () => {
      child.stdin.write('stop\n');
      const out = await lines.next();
      if (out.done) throw new Error('the health prober ended without its latencies');
      return JSON.parse(out.value) as number[];
    },
  };
}

/** Probes grpc health back to back (5 ms apart) until stopped; returns the latencies. */
function prober(addr: string): { stop: () => number[]; count: () => number } {
  const client = new HealthClient(addr, grpc.credentials.createInsecure());
  const lat: number[] = [];
  let running = true;
  const loop = async (): Promise<void> => {
    while (running) {
      const t0 = performance.now();
      await new Promise<void>((r) => client.check({ service: '' }, new grpc.Metadata(), { deadline: Date.now() + 5000 }, () => r()));
      lat.push(performance.now() - t0);
      await sleep(5);
    }
  };
  void loop();
  return {
    stop: () => {
      running = false;
      client.close();
      return lat;
    },
    count: () => lat.length,
  };
}

/** `--slice-ms`: the planner's slice (0: its default). */
let sliceMs = 0;

/** The server's utilisation in full re-plan pass k: 0.6 and 0.2 in turn, each a material change. */
const passUtilisation = (k: number): number => (k % 2 === 0 ? 0.6 : 0.2);

async function runRule(
  { DEFAULT_CLASSES, PlanMaker, PlannerServer }: PlannerModule,
  natsUrl: string,
  clients: number,
  threshold: number,
  steadyS: number,
  passes: number,
  executors = 1,
): Promise<Record<string, number>> {
  const maker = new PlanMaker({ ...PLAN_SETTINGS, stages: STAGES, classes: DEFAULT_CLASSES, serverEntryMs: 0.6 });
  const planner = new PlannerServer({
    maker,
    log: createLogger({ name: 'bench', level: 'warn' }),
    ...PLANNER_SETTINGS,
    natsUrl,
    modelId: '',
    clientTtlMs: 600_000,
    debounceMs: 50,
    replanThreshold: threshold,
    // --slice-ms: PLANNER_SLICE_MS (default: the planner's own).
    ...(sliceMs > 0 ? { sliceMs } : {}),
  });
  const { port } = await planner.start();
  const { child, lines: acks } = spawnRole('--publish', natsUrl);
  const send = async (cmd: object): Promise<void> => {
    child.stdin.write(`${JSON.stringify({ ...cmd, executors })}\n`);
    await acks.next();
  };
  const waitPass = async (after: number): Promise<void> => {
    const t0 = Date.now();
    while (planner.counters.passes <= after) {
      if (Date.now() - t0 > 120_000) throw new Error('no re-plan pass within 120 s');
      await sleep(5);
    }
  };
  try {
    await send({ op: 'profiles', clients });
    while (planner.counters.profiles < clients) await sleep(10);
    let p = planner.counters.passes;
    await send({ op: 'load', clients, utilisation: 0.2 });
    await waitPass(p);
    while (planner.plans().length < clients) await sleep(10);
    if (executors > 1) {
      // Every client assigned, spread over the executors.
      while (planner.plans().some((x) => !x.executor)) await sleep(10);
      process.stderr.write(
        `    clients per executor: ${planner
          .executorSummaries()
          .map((e) => `${e.id} ${e.clients}`)
          .join(', ')}\n`,
      );
    }
    const probe = await externalProber(`127.0.0.1:${port}`);
    const passMs: number[] = [];
    for (let k = 0; k < passes; k++) {
      p = planner.counters.passes;
      await send({ op: 'load', clients, utilisation: passUtilisation(k) });
      await waitPass(p);
      passMs.push(planner.counters.lastPassMs);
    }
    const healthDuringPasses = await probe.stop();
    // The steady state is at the last pass's load: at another, its first report would be a
    // material change, and the window would time one more full re-plan (it did, with an odd
    // number of passes: 0.6 cores of "steady" CPU that was one pass).
    const settled = passUtilisation(passes - 1);
    // CPU is measured without probes (the planner's side of each call would count); health
    // latency in a second window of the same traffic.
    const steady = async (profilePeriodS: number): Promise<{ cpu: number; health: number[] }> => {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      await send({ op: 'steady', clients, utilisation: settled, seconds: steadyS, profilePeriodS });
      const c = process.cpuUsage(c0);
      const wall = performance.now() - t0;
      const h = await externalProber(`127.0.0.1:${port}`);
      await send({ op: 'steady', clients, utilisation: settled, seconds: Math.min(steadyS, 5), profilePeriodS });
      return { cpu: (c.user + c.system) / 1000 / wall, health: await h.stop() };
    };
    const loadsOnly = await steady(0);
    const withProfiles = await steady(10);
    return {
      passMsMedian: quantile(passMs, 0.5),
      passMsMax: Math.max(...passMs),
      healthP50: quantile(healthDuringPasses, 0.5),
      healthP99: quantile(healthDuringPasses, 0.99),
      healthMax: Math.max(...healthDuringPasses),
      steadyCpu: loadsOnly.cpu,
      steadyHealthP99: quantile(loadsOnly.health, 0.99),
      steadyProfilesCpu: withProfiles.cpu,
      steadyProfilesHealthP99: quantile(withProfiles.health, 0.99),
    };
  } finally {
    child.kill();
    await planner.stop();
  }
}

async function main(): Promise<void> {
  const pub = process.argv.indexOf('--publish');
  if (pub >= 0) {
    await publisher(process.argv[pub + 1]);
    return;
  }
  const probeAt = process.argv.indexOf('--probe');
  if (probeAt >= 0) {
    await proberProcess(process.argv[probeAt + 1]);
    return;
  }
  if (!process.argv.includes('--source') && process.env.TSX_TSCONFIG_PATH !== COMPILED_TSCONFIG) {
    const again = spawnSync(process.execPath, [...process.execArgv, __filename, ...process.argv.slice(2)], {
      stdio: 'inherit',
      env: { ...process.env, TSX_TSCONFIG_PATH: COMPILED_TSCONFIG },
    });
    process.exit(again.status ?? 1);
  }
  const clients = arg('clients', 10_000);
  const steadyS = arg('steady-s', 20);
  const passes = arg('passes', 3);
  const executors = arg('executors', 1);
  sliceMs = arg('slice-ms', 0);
  const { planner, what, cleanup } = loadPlanner();
  const nats = await startNatsServer();
  try {
    process.stderr.write(
      `planner bench: ${clients} clients × ${planner.DEFAULT_CLASSES.length} classes, ${STAGES.length} stages; steady ${steadyS} s; the planner ${what}\n`,
    );
    const rows: [string, Record<string, number>][] = [];
    for (const [name, threshold, n] of [
      ['material changes, sliced (0.02)', 0.02, 1],
      ['every report re-plans all (threshold 0, sliced)', 0, 1],
      ...(executors > 1 ? ([[`material changes, sliced (0.02), ${executors} executors`, 0.02, executors]] as const) : []),
    ] as const) {
      process.stderr.write(`  running: ${name} …\n`);
      rows.push([name, await runRule(planner, nats.url, clients, threshold, steadyS, passes, n)]);
    }
    const f = (v: number, d = 1): string => v.toFixed(d);
    console.log(
      '| rule | full re-plan ms (median / max) | health p50 / p99 / max during passes, ms | steady CPU (cores), 1 load/s | health p99 | steady CPU + profiles every 10 s | health p99 |',
    );
    console.log('|---|---:|---:|---:|---:|---:|---:|');
    for (const [name, r] of rows) {
      console.log(
        `| ${name} | ${f(r.passMsMedian, 0)} / ${f(r.passMsMax, 0)} | ${f(r.healthP50)} / ${f(r.healthP99)} / ${f(r.healthMax)} | ${f(r.steadyCpu, 3)} | ${f(r.steadyHealthP99)} | ${f(r.steadyProfilesCpu, 3)} | ${f(r.steadyProfilesHealthP99)} |`,
      );
    }
  } finally {
    await nats.stop();
    cleanup();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
