/**
 * Memory after bursts: does the executor's RSS come back once a burst of long sessions closed?
 *
 * Runs the real executor (apps/server-executor/src/main.ts) as a child process per variant and
 * measures its RSS (/proc/PID/status VmRSS, sampled every 20 ms):
 *   - idle: after start and one warm-up generation;
 *   - peak: during a burst of S concurrent server-side generations (P-token prompt, N new tokens);
 *   - after: 2 s after the last session of the burst closed (then again after a second burst,
 *     to show whether memory is reused or keeps growing);
 * and the speed each variant costs: the burst's wall and CPU time, and one lone generation's
 * decode ms/token (wall and the executor's CPU; CPU time resists a shared machine better). Variants, side by side in the same run, repetitions interleaved:
 *   - default: onnxruntime's memory arena on, KV buffers left to the collector, glibc defaults;
 *   - return:  EXECUTOR_RETURN_MEMORY=true (no arena, a collection once no session is open)
 *              and MALLOC_MMAP_THRESHOLD_=131072 (large blocks are mmapped, so freeing returns them).
 *   - return-no-malloc-env, malloc-env-only (with --variants): each half alone, to attribute.
 *
 *   npm run bench:memory -- [--preset small|gpt2] [--sessions 32] [--prompt 512] [--new 32] [--reps 1]
 *        [--threads 1] [--variants default,return,return-no-malloc-env,malloc-env-only]
 *
 * The figure (1.26 GiB above idle after 32 sessions of 512 tokens on gpt2): `--preset gpt2`.
 */
import * as os from 'node:os';
import * as grpc from '@grpc/grpc-js';
import { promptIds as ids, startExecutorProcess } from '@tandem/loadtest';
import { readManifest } from '@tandem/model';
import { channelOptions, ExecutorServiceClient } from '@tandem/protocol';
import { serverGeneration } from '@tandem/testkit';
import { sleep } from '@tandem/util';
import { arg, benchModel, median } from './bench-kit';

const opts = {
  preset: arg('preset', 'small'),
  sessions: Number(arg('sessions', '32')),
  prompt: Number(arg('prompt', '512')),
  newTokens: Number(arg('new', '32')),
  reps: Number(arg('reps', '1')),
  threads: arg('threads', '1'),
  variants: arg('variants', 'default,return').split(',').filter(Boolean),
};
const VARIANTS: Record<string, Record<string, string>> = {
  default: {},
  return: { EXECUTOR_RETURN_MEMORY: 'true', MALLOC_MMAP_THRESHOLD_: '131072' },
  'return-no-malloc-env': { EXECUTOR_RETURN_MEMORY: 'true' },
  'malloc-env-only': { MALLOC_MMAP_THRESHOLD_: '131072' },
};
const say = (s: string): void => {
  process.stderr.write(`${s}\n`);
};
const MiB = 1024 * 1024;

/** One server-side generation of `n` tokens; resolves with the ms per token between its first and last. */
async function generate(client: ExecutorServiceClient, prompt: number[], n: number): Promise<number> {
  const { at } = await serverGeneration(client, prompt, n, { clientId: 'bench', deadlineMs: 600_000 });
  return n > 1 ? ((at[at.length - 1] ?? 0) - (at[0] ?? 0)) / (n - 1) : 0;
}

interface Figures {
  idle: number;
  peak: number;
  after: number;
  after2: number;
  burstMs: number;
  burstCpuS: number;
  decodeMs: number;
  decodeCpuMs: number;
}

async function measure(dir: string, env: Record<string, string>): Promise<Figures> {
  const executor = await startExecutorProcess(dir, {
    EXECUTOR_THREADS: opts.threads,
    EXECUTOR_MAX_SESSIONS: String(Math.max(64, opts.sessions + 1)),
    EXECUTOR_MAX_MESSAGE_BYTES: String(256 << 20),
    ...env,
  });
  const rssOf = (): number => executor.rssBytes();
  const client = new ExecutorServiceClient(executor.address, grpc.credentials.createInsecure(), channelOptions(256 << 20));
  try {
    await generate(client, ids(opts.prompt, 999), 4);
    await sleep(2000);
    const idle = rssOf();
    let peak = idle;
    const sampler = setInterval(() => {
      peak = Math.max(peak, rssOf());
    }, 20);
    const burst = async (): Promise<number> => {
      const t0 = performance.now();
      await Promise.all(Array.from({ length: opts.sessions }, (_, i) => generate(client, ids(opts.prompt, i + 1), opts.newTokens)));
      return performance.now() - t0;
    };
    const c0 = executor.cpuSeconds();
    const burstMs = await burst();
    const burstCpuS = executor.cpuSeconds() - c0;
    await sleep(2000);
    const after = rssOf();
    await burst();
    clearInterval(sampler);
    await sleep(2000);
    const after2 = rssOf();
    const DECODE = 128;
    const c1 = executor.cpuSeconds();
    const decodeMs = await generate(client, ids(16, 4242), DECODE);
    const decodeCpuMs = ((executor.cpuSeconds() - c1) * 1000) / DECODE;
    return { idle, peak, after, after2, burstMs, burstCpuS, decodeMs, decodeCpuMs };
  } finally {
    client.close();
    await executor.kill();
  }
}

async function main(): Promise<void> {
  const dir = await benchModel(opts.preset);
  const nPos = (await readManifest(dir)).config.nPositions;
  if (opts.prompt + opts.newTokens > nPos) throw new Error(`--prompt + --new must fit in nPositions = ${nPos}`);
  say(
    `memory bench: ${opts.preset}, ${opts.sessions} sessions × (${opts.prompt}-token prompt + ${opts.newTokens} tokens), ${os.cpus().length} cpus, load ${os
      .loadavg()
      .map((x) => x.toFixed(1))
      .join(' ')}`,
  );
  const results: Record<string, Figures[]> = {};
  for (let r = 0; r < opts.reps; r++) {
    const order = r % 2 ? [...opts.variants].reverse() : opts.variants;
    for (const v of order) {
      if (!VARIANTS[v]) throw new Error(`--variants: unknown variant ${v} (known: ${Object.keys(VARIANTS).join(', ')})`);
      const f = await measure(dir, VARIANTS[v]);
      (results[v] ??= []).push(f);
      say(
        `rep ${r + 1} ${v}: idle ${(f.idle / MiB).toFixed(0)} MiB, peak ${(f.peak / MiB).toFixed(0)}, after ${(f.after / MiB).toFixed(0)}, after a 2nd burst ${(f.after2 / MiB).toFixed(0)}; burst ${f.burstMs.toFixed(0)} ms (${f.burstCpuS.toFixed(1)} CPU s), decode ${f.decodeMs.toFixed(2)} ms/token (${f.decodeCpuMs.toFixed(2)} CPU ms)`,
      );
    }
  }
  const out = (s: string): void => {
    process.stdout.write(`${s}\n`);
  };
  const m = (xs: number[], d = 0): string => median(xs).toFixed(d);
  out(
    `\nexecutor RSS around a burst: ${opts.preset} preset, ${opts.sessions} concurrent server-side generations of a ${opts.prompt}-token prompt + ${opts.newTokens} tokens, EXECUTOR_THREADS=${opts.threads}, median of ${opts.reps}\n`,
  );
  out(
    '| variant | env | idle MiB | peak MiB | after burst MiB | above idle MiB | after 2nd burst MiB | burst wall ms | burst CPU s | decode ms/token | decode CPU ms/token |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  );
  for (const v of opts.variants) {
    const xs = results[v];
    const env =
      Object.entries(VARIANTS[v])
        .map(([k, x]) => `${k}=${x}`)
        .join(' ') || '(none)';
    out(
      `| ${v} | ${env} | ${m(xs.map((x) => x.idle / MiB))} | ${m(xs.map((x) => x.peak / MiB))} | ${m(xs.map((x) => x.after / MiB))} | ${m(xs.map((x) => (x.after - x.idle) / MiB))} | ${m(xs.map((x) => x.after2 / MiB))} | ${m(xs.map((x) => x.burstMs))} | ${m(
        xs.map((x) => x.burstCpuS),
        1,
      )} | ${m(
        xs.map((x) => x.decodeMs),
        2,
      )} | ${m(
        xs.map((x) => x.decodeCpuMs),
        2,
      )} |`,
    );
  }
}

if (require.main === module)
  main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  });
