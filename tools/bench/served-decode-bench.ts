/**
 * Served decode vs one monolithic graph: decode ms/token of ONE server-side generation through
 * the real executor (ExecutorServer + the worker-thread engine, over gRPC on 127.0.0.1), against
 * the whole model as one ONNX graph run by onnxruntime-node in this process (built here from the
 * stage graphs, see monolithic.ts), in the same run. Three paths, repetitions interleaved (the
 * order rotates), for each --threads value (EXECUTOR_THREADS and the monolithic session's
 * intra-op threads alike):
 *   - monolithic: one InferenceSession, session.run per token;
 *   - served, fused: an executor with EXECUTOR_FUSED=true (each step of a lone generation is one
 *     fused call in the inference thread);
 *   - served, staged: an executor with EXECUTOR_FUSED=false (one engine call per stage), for reference.
 * A served generation of `decode + 1` tokens is timed from the first token's arrival (the
 * prefill's) to the last one's: `decode` decode steps, as the monolithic run's `decode` steps
 * after its prefill. CPU ms/token is this process's CPU (all threads) over the same window.
 * Ratios are per repetition (path / monolithic of the same repetition), then median (min-max).
 * The tokens of every path are checked to be identical.
 *
 *   npx tsx tools/bench/served-decode-bench.ts [--preset gpt2] [--prompt 128] [--decode 64]
 *        [--reps 5] [--threads 2,1] [--json-out FILE]
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { readManifest } from '@tandem/model';
import { channelOptions, ExecutorServiceClient, toWireTensor } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { ExecutorServer, WorkerStageEngine } from '@tandem/server-executor';
import { arg, benchModel, formatSpread, openSession, spread, type Spread, type VsMonolithic, vsMonolithicRows } from './bench-kit';
import { cpuMs, Monolithic } from './monolithic';

const preset = arg('preset', 'gpt2');
const promptLen = Number(arg('prompt', '128'));
const decode = Number(arg('decode', '64'));
const reps = Number(arg('reps', '5'));
const threadList = arg('threads', '2,1')
  .split(',')
  .filter((x) => x !== '')
  .map(Number);
const jsonOut = arg('json-out', path.join(os.tmpdir(), 'tandem-bench', 'served-decode-bench.json'));
const say = (s: string): void => {
  process.stderr.write(`${s}\n`);
};

type Path = 'monolithic' | 'fused' | 'staged';
const PATHS: readonly Path[] = ['monolithic', 'fused', 'staged'];
/** One timed generation: decode ms/token, CPU ms/token, its tokens. */
interface Sample {
  readonly ms: number;
  readonly cpu: number;
  readonly tokens: number[];
}
/** One thread count: each path's figures, and each served path over the monolithic graph. */
type PathStats = { decodeMsPerToken: Spread; decodeCpuMsPerToken: Spread };
type PathRatios = { decode: Spread; decodeCpu: Spread };
type ThreadsResult = { threads: number } & VsMonolithic<Path, PathStats, PathRatios>;

/** An executor as a user runs it (worker engine), in this process, listening on 127.0.0.1. */
interface Served {
  readonly server: ExecutorServer;
  readonly client: ExecutorServiceClient;
}

async function startServed(dir: string, threads: number, fused: boolean): Promise<Served> {
  const engine = await WorkerStageEngine.load(dir, { intraOpNumThreads: threads, fuseAllStages: fused });
  const server = new ExecutorServer({
    engine,
    log: createLogger({ name: 'bench', level: 'silent' }),
    address: '127.0.0.1:0',
    serverId: `bench-${fused ? 'fused' : 'staged'}`,
    maxSessions: 16,
    maxContextTokens: 0,
    maxMessageBytes: 64 << 20,
    batching: true,
    maxBatch: 16,
    idleTimeoutMs: 600_000,
    telemetryIntervalMs: 1000,
  });
  const { port } = await server.start();
  return { server, client: new ExecutorServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), channelOptions(64 << 20)) };
}

/** One server-side generation of decode + 1 tokens; timed from the first token to the last. */
async function servedGenerate(s: Served, prompt: number[]): Promise<Sample> {
  const { call, next } = await openSession(s.client);
  call.write({
    kind: {
      $case: 'generate',
      value: {
        seq: '1',
        input: toWireTensor({ dtype: 'int64', shape: [1, prompt.length], data: BigInt64Array.from(prompt, BigInt) }),
        maxNewTokens: decode + 1,
      },
    },
  });
  const tokens: number[] = [];
  let t0 = 0;
  let c0 = 0;
  for (let i = 0; i <= decode; i++) {
    const m = await next();
    if (m.kind?.$case !== 'token' || m.kind.value.index !== i) throw new Error(`expected token ${i}`);
    tokens.push(m.kind.value.token);
    if (i === 0) {
      t0 = performance.now();
      c0 = cpuMs();
    }
  }
  const sample = { ms: (performance.now() - t0) / decode, cpu: (cpuMs() - c0) / decode, tokens };
  await new Promise<void>((resolve, reject) => {
    call.on('status', (st: grpc.StatusObject) => (st.code === grpc.status.OK ? resolve() : reject(new Error(st.details))));
    call.on('error', reject);
    call.resume();
    call.end();
  });
  return sample;
}

async function benchThreads(dir: string, threads: number): Promise<ThreadsResult> {
  const manifest = await readManifest(dir);
  const prompt = Array.from({ length: promptLen }, (_, i) => (i * 7919 + 13) % manifest.config.vocabSize);
  const mono = await Monolithic.load(dir, manifest, threads, false);
  const fused = await startServed(dir, threads, true);
  const staged = await startServed(dir, threads, false);
  try {
    const run: Record<Path, () => Promise<Sample>> = {
      monolithic: async () => {
        const g = await mono.generate(prompt, decode);
        return { ms: g.decodeMs, cpu: g.decodeCpuMs, tokens: g.tokens };
      },
      fused: () => servedGenerate(fused, prompt),
      staged: () => servedGenerate(staged, prompt),
    };
    // Untimed warm-up of each path, and the reference tokens.
    const ref = (await run.monolithic()).tokens;
    for (const p of ['fused', 'staged'] as const) await run[p]();
    const samples: Record<Path, Sample[]> = { monolithic: [], fused: [], staged: [] };
    for (let r = 0; r < reps; r++) {
      for (let k = 0; k < PATHS.length; k++) {
        const p = PATHS[(k + r) % PATHS.length];
        const s = await run[p]();
        // The monolithic run makes `decode` tokens, a served one `decode + 1`: compare the common ones.
        if (s.tokens.slice(0, ref.length).join() !== ref.join()) throw new Error(`${p} generated other tokens than the monolithic graph`);
        samples[p].push(s);
      }
      say(`[${preset} ${threads}t] rep ${r + 1}/${reps}: decode ms/token ${PATHS.map((p) => `${p} ${samples[p][r].ms.toFixed(2)}`).join(', ')}`);
    }
    const out: ThreadsResult = { threads };
    for (const p of PATHS) {
      out[p] = { decodeMsPerToken: spread(samples[p].map((s) => s.ms)), decodeCpuMsPerToken: spread(samples[p].map((s) => s.cpu)) };
      if (p !== 'monolithic') {
        out[`${p}VsMonolithic` as const] = {
          decode: spread(samples[p].map((s, i) => s.ms / samples.monolithic[i].ms)),
          decodeCpu: spread(samples[p].map((s, i) => s.cpu / samples.monolithic[i].cpu)),
        };
      }
    }
    return out;
  } finally {
    for (const s of [fused, staged]) {
      s.client.close();
      await s.server.stop({ graceMs: 0 });
    }
    await mono.close();
  }
}

async function main(): Promise<void> {
  const dir = await benchModel(preset);
  const loadBefore = os.loadavg().map((x) => Number(x.toFixed(2)));
  const results: ThreadsResult[] = [];
  for (const t of threadList) results.push(await benchThreads(dir, t));
  const env = {
    node: process.version,
    cpus: os.cpus().length,
    loadavgBefore: loadBefore,
    loadavgAfter: os.loadavg().map((x) => Number(x.toFixed(2))),
    preset,
    promptTokens: promptLen,
    decodeTokens: decode,
    reps,
    mallocTopPad: process.env.MALLOC_TOP_PAD_ ?? null,
  };
  const lines = [
    `\nserved decode vs one monolithic graph, preset ${preset}, prompt ${promptLen}, ${decode} decode tokens, one generation at a time, ${reps} interleaved repetitions; median (min-max)`,
  ];
  for (const r of results) {
    lines.push(`\n${r.threads} thread(s)`);
    lines.push(`| path | decode ms/token | / monolithic | decode CPU ms/token | / monolithic |\n|---|---:|---:|---:|---:|`);
    for (const { label, x, rel } of vsMonolithicRows<Path, PathStats, PathRatios>(r, [
      ['monolithic', 'monolithic graph, one InferenceSession'],
      ['fused', 'executor over gRPC, EXECUTOR_FUSED=true'],
      ['staged', 'executor over gRPC, EXECUTOR_FUSED=false'],
    ] as const)) {
      lines.push(
        `| ${label} | ${formatSpread(x.decodeMsPerToken, 2)} | ${rel ? `${formatSpread(rel.decode, 3)}x` : '1'} | ${formatSpread(x.decodeCpuMsPerToken, 2)} | ${rel ? `${formatSpread(rel.decodeCpu, 3)}x` : '1'} |`,
      );
    }
  }
  process.stdout.write(`${lines.join('\n')}\n\nenv: ${JSON.stringify(env)}\n`);
  mkdirSync(path.dirname(jsonOut), { recursive: true });
  writeFileSync(jsonOut, `${JSON.stringify({ env, results }, null, 2)}\n`);
  say(`wrote ${jsonOut}`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
