import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { launchService, type ServiceProcess } from '@tandem/launcher';
import { readManifest } from '@tandem/model';
import { renderChart } from '@tandem/plot';
import {
  channelOptions,
  ExecutorServiceClient,
  executorStatus,
  toWireTensor,
  type GetStatusResponse,
  type SessionRequest,
  type SessionResponse,
} from '@tandem/protocol';
import { sleep } from '@tandem/util';
import { dist, percentile } from './metrics';

/**
 * Soak: many concurrent sessions against ONE executor (a child process, so its RSS is its own)
 * for a long time. Each of `sessions` workers opens a session, sends a prompt, decodes
 * `newTokens` tokens with one step per token (the head samples), closes it, and starts the
 * next, until the duration is over; every 10th session is abandoned mid-way (the client
 * cancels the stream), the way a vanished caller leaves. Reports leaked sessions (GetStatus
 * active sessions once every worker closed), RSS over time and its growth after warm-up, and
 * p99 step latency per bucket (a minute by default); writes soak.json and two SVG curves.
 */

export interface SoakOptions {
  readonly modelDir: string;
  /** Concurrent sessions (workers). */
  readonly sessions: number;
  readonly durationMs: number;
  /** RSS growth is measured from the first sample after this, ms. */
  readonly warmupMs: number;
  /** p99 step latency is reported per bucket of this many ms. */
  readonly bucketMs: number;
  /** How often RSS and GetStatus are sampled, ms. */
  readonly sampleMs: number;
  readonly promptTokens: number;
  readonly newTokens: number;
  /** Extra environment of the executor (e.g. EXECUTOR_RETURN_MEMORY). */
  readonly executorEnv?: Readonly<Record<string, string>>;
  /** Where soak.json and the SVGs go; none: not written. */
  readonly outDir?: string;
  /** Progress lines. */
  readonly onProgress?: (line: string) => void;
}

export interface SoakSample {
  readonly tMs: number;
  readonly rssBytes: number;
  readonly activeSessions: number;
  readonly stepsCompleted: number;
}
export interface SoakBucket {
  readonly fromMs: number;
  readonly steps: number;
  readonly p50Ms: number;
  readonly p90Ms: number;
  readonly p99Ms: number;
}

export interface SoakReport {
  readonly options: Omit<SoakOptions, 'onProgress'>;
  readonly sessionsCompleted: number;
  readonly sessionsAbandoned: number;
  /** Sessions that ended with an error other than the abandoning client's own cancel. */
  readonly sessionsFailed: number;
  readonly failures: readonly string[];
  readonly steps: number;
  /** GetStatus active sessions after every worker closed its last session (and up to 5 s for the executor to see it). */
  readonly leakedSessions: number;
  readonly samples: readonly SoakSample[];
  readonly buckets: readonly SoakBucket[];
  /** RSS at the first sample after warm-up, bytes. */
  readonly rssBaselineBytes: number;
  /** Largest RSS after warm-up, relative to the baseline (0.03 = 3 % more). */
  readonly rssGrowthMax: number;
  /** Median RSS of the last bucket relative to the baseline. */
  readonly rssGrowthEnd: number;
  readonly executorExitedEarly: boolean;
}

/** Deterministic prompt ids of session `seed`. */
export const promptIds = (n: number, seed: number): number[] => Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104_729) % 50_000);

/** Starts the executor as a child process on a free port, without NATS; resolves once it listens. */
export function startExecutorProcess(modelDir: string, env: Readonly<Record<string, string>>): Promise<ServiceProcess> {
  return launchService({
    name: 'the executor',
    app: 'server-executor',
    env: { MODEL_DIR: modelDir, EXECUTOR_ADDR: '127.0.0.1:0', NATS_URL: 'off', LOG_LEVEL: 'warn', EXECUTOR_THREADS: '1', ...env },
  });
}

/**
 * One session: prompt, then `newTokens` one-token steps through every stage; `abandonAt` > 0
 * cancels the stream after that many steps. Each step's latency goes to `onStep`.
 */
function oneSession(
  client: ExecutorServiceClient,
  stages: number,
  prompt: number[],
  newTokens: number,
  abandonAt: number,
  deadlineMs: number,
  onStep: (ms: number) => void,
): Promise<'completed' | 'abandoned'> {
  return new Promise((resolve, reject) => {
    const call: grpc.ClientDuplexStream<SessionRequest, SessionResponse> = client.session({ deadline: Date.now() + deadlineMs });
    let seq = 0;
    let t0 = 0;
    let abandoned = false;
    const send = (v: number[]): void => {
      seq++;
      t0 = performance.now();
      call.write({
        kind: {
          $case: 'step',
          value: {
            seq: String(seq),
            stageBegin: 0,
            stageEnd: stages,
            input: toWireTensor({ dtype: 'int64', shape: [1, v.length], data: BigInt64Array.from(v, BigInt) }),
            sample: true,
          },
        },
      });
    };
    call.on('data', (m: SessionResponse) => {
      if (m.kind?.$case === 'opened') {
        send(prompt);
        return;
      }
      if (m.kind?.$case !== 'result') {
        reject(new Error(`expected a result, got ${m.kind?.$case}`));
        call.cancel();
        return;
      }
      onStep(performance.now() - t0);
      if (abandonAt > 0 && seq >= abandonAt) {
        abandoned = true;
        call.cancel();
        resolve('abandoned');
        return;
      }
      if (seq > newTokens) {
        call.end();
        return;
      }
      const out = m.kind.value.output;
      send([out?.$case === 'token' ? out.value : 1]);
    });
    call.on('error', (e: grpc.ServiceError) => {
      if (!abandoned) reject(e);
    });
    call.on('end', () => resolve('completed'));
    call.write({ kind: { $case: 'open', value: { clientId: 'soak', planEpoch: '0', modelId: '' } } });
  });
}

/** Runs the soak; the executor is started and stopped here. */
export async function runSoak(opts: SoakOptions): Promise<SoakReport> {
  const say = opts.onProgress ?? (() => undefined);
  const executor = await startExecutorProcess(opts.modelDir, {
    EXECUTOR_MAX_SESSIONS: String(opts.sessions + 8),
    EXECUTOR_MAX_MESSAGE_BYTES: String(64 << 20),
    ...opts.executorEnv,
  });
  let exitedEarly = false;
  void executor.exited.then(() => {
    exitedEarly = true;
  });
  const client = new ExecutorServiceClient(executor.address, grpc.credentials.createInsecure(), channelOptions(64 << 20));
  const status = (): Promise<GetStatusResponse> => executorStatus(client, 10_000);
  try {
    const stages = (await readManifest(opts.modelDir)).stages.length;
    const samples: SoakSample[] = [];
    const stepTimes: { tMs: number; ms: number }[] = [];
    const failures: string[] = [];
    let completed = 0;
    let abandoned = 0;
    let started = 0;
    const t0 = performance.now();
    const now = (): number => performance.now() - t0;
    const end = opts.durationMs;
    const sample = async (): Promise<void> => {
      const st = await status().catch(() => undefined);
      samples.push({
        tMs: now(),
        rssBytes: executor.rssBytes(),
        activeSessions: st?.activeSessions ?? Number.NaN,
        stepsCompleted: Number(st?.stepsCompleted ?? Number.NaN),
      });
    };
    await sample();
    let sampling = true;
    const sampler = (async () => {
      let nextLog = opts.bucketMs;
      while (sampling) {
        await sleep(opts.sampleMs);
        if (!sampling) break;
        await sample();
        if (now() >= nextLog) {
          const s = samples[samples.length - 1];
          say(
            `${(s.tMs / 1000).toFixed(0)} s: RSS ${(s.rssBytes / 2 ** 20).toFixed(0)} MiB, ${s.activeSessions} active, ${completed} completed, ${abandoned} abandoned, ${failures.length} failed`,
          );
          nextLog += opts.bucketMs;
        }
      }
    })();
    const workers = Array.from({ length: opts.sessions }, async (_, w) => {
      // Staggered starts, so the sessions do not run in lockstep.
      await sleep((w * 997) % Math.max(1, Math.min(2000, opts.durationMs / 10)));
      while (now() < end && !exitedEarly) {
        const n = started++;
        const abandonAt = n % 10 === 9 ? 1 + (n % opts.newTokens) : 0;
        try {
          const r = await oneSession(client, stages, promptIds(opts.promptTokens, n + 1), opts.newTokens, abandonAt, opts.durationMs + 300_000, (ms) =>
            stepTimes.push({ tMs: now(), ms }),
          );
          if (r === 'completed') completed++;
          else abandoned++;
        } catch (err) {
          failures.push(err instanceof Error ? err.message : String(err));
          await sleep(100);
        }
      }
    });
    await Promise.all(workers);
    sampling = false;
    await sampler;
    // Every worker closed its last session: what the executor still holds now is a leak.
    let leaked = Number.NaN;
    for (let i = 0; i < 50; i++) {
      leaked = (await status()).activeSessions;
      if (leaked === 0) break;
      await sleep(100);
    }
    await sample();

    const buckets: SoakBucket[] = [];
    for (let from = 0; from < end; from += opts.bucketMs) {
      // The load test's percentiles (metrics.ts); NaN for an empty bucket.
      const d = dist(stepTimes.filter((s) => s.tMs >= from && s.tMs < from + opts.bucketMs).map((s) => s.ms));
      buckets.push({ fromMs: from, steps: d.n, p50Ms: d.p50 ?? NaN, p90Ms: d.p90 ?? NaN, p99Ms: d.p99 ?? NaN });
    }
    const after = samples.filter((s) => s.tMs >= opts.warmupMs && Number.isFinite(s.rssBytes));
    const base = after[0]?.rssBytes ?? Number.NaN;
    const lastFrom = Math.max(opts.warmupMs, end - opts.bucketMs);
    const tail = after
      .filter((s) => s.tMs >= lastFrom)
      .map((s) => s.rssBytes)
      .sort((a, b) => a - b);
    const report: SoakReport = {
      options: { ...opts, onProgress: undefined } as Omit<SoakOptions, 'onProgress'>,
      sessionsCompleted: completed,
      sessionsAbandoned: abandoned,
      sessionsFailed: failures.length,
      failures: [...new Set(failures)].slice(0, 20),
      steps: stepTimes.length,
      leakedSessions: leaked,
      samples,
      buckets,
      rssBaselineBytes: base,
      rssGrowthMax: Math.max(...after.map((s) => s.rssBytes)) / base - 1,
      rssGrowthEnd: percentile(tail, 50) / base - 1,
      executorExitedEarly: exitedEarly,
    };
    if (opts.outDir) writeSoakReport(report, opts.outDir);
    return report;
  } finally {
    client.close();
    await executor.stop();
  }
}

/** soak.json, soak-rss.svg (RSS and open sessions over time) and soak-latency.svg (p50/p99 step latency per bucket). */
export function writeSoakReport(r: SoakReport, dir: string): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'soak.json'), `${JSON.stringify(r, null, 2)}\n`);
  const o = r.options;
  const title = `${o.sessions} sessions, ${(o.durationMs / 1000).toFixed(0)} s`;
  writeFileSync(
    join(dir, 'soak-rss.svg'),
    renderChart({
      kind: 'line',
      title: `Executor RSS during the soak (${title}; warm-up ${(o.warmupMs / 1000).toFixed(0)} s)`,
      xLabel: 'time (s)',
      yLabel: 'RSS (MiB)',
      series: [{ name: 'RSS', points: r.samples.map((s) => ({ x: s.tMs / 1000, y: s.rssBytes / 2 ** 20 })) }],
    }),
  );
  writeFileSync(
    join(dir, 'soak-latency.svg'),
    renderChart({
      kind: 'line',
      title: `Step latency per ${(o.bucketMs / 1000).toFixed(0)} s (${title})`,
      xLabel: 'time (s)',
      yLabel: 'step latency (ms)',
      series: [
        { name: 'p99', points: r.buckets.map((b) => ({ x: b.fromMs / 1000, y: b.p99Ms })) },
        { name: 'p90', points: r.buckets.map((b) => ({ x: b.fromMs / 1000, y: b.p90Ms })) },
        { name: 'p50', points: r.buckets.map((b) => ({ x: b.fromMs / 1000, y: b.p50Ms })) },
      ],
    }),
  );
}

/** The report as a few lines of text. */
export function formatSoakReport(r: SoakReport): string {
  const MiB = 2 ** 20;
  const lines = [
    `soak: ${r.options.sessions} concurrent sessions for ${(r.options.durationMs / 1000).toFixed(0)} s (${r.options.promptTokens}-token prompt + ${r.options.newTokens} steps each; every 10th abandoned mid-way)`,
    `sessions: ${r.sessionsCompleted} completed, ${r.sessionsAbandoned} abandoned, ${r.sessionsFailed} failed${r.failures.length ? ` (${r.failures.join('; ')})` : ''}; ${r.steps} steps`,
    `leaked sessions (GetStatus active after all closed): ${r.leakedSessions}`,
    `RSS after warm-up (${(r.options.warmupMs / 1000).toFixed(0)} s): baseline ${(r.rssBaselineBytes / MiB).toFixed(0)} MiB, max +${(r.rssGrowthMax * 100).toFixed(1)} %, last bucket +${(r.rssGrowthEnd * 100).toFixed(1)} %`,
    '| from s | steps | p50 ms | p90 ms | p99 ms |',
    '|---:|---:|---:|---:|---:|',
    ...r.buckets.map((b) => `| ${(b.fromMs / 1000).toFixed(0)} | ${b.steps} | ${b.p50Ms.toFixed(1)} | ${b.p90Ms.toFixed(1)} | ${b.p99Ms.toFixed(1)} |`),
  ];
  if (r.executorExitedEarly) lines.push('THE EXECUTOR EXITED DURING THE SOAK');
  return lines.join('\n');
}
