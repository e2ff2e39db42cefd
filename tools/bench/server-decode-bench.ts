/**
 * Server-side decoding benchmark: N concurrent all-server generations through one real
 * ExecutorServer on 127.0.0.1 over gRPC, each either
 *   - per-step: the client sends one sampled `step` per token and feeds the token back
 *     (a round trip per token), or
 *   - server-generate: one `generate`; the executor decodes and streams the tokens.
 * Both paths run against the same executor in the same run, alternating which goes first,
 * `--reps` times. Prints decode ms/token (median over generations of (last - first token) /
 * (tokens - 1)), tokens/s across all generations, the ratio server-generate / per-step and
 * the spread (min-max over repetitions). `--latency MS` adds an emulated one-way link latency
 * on the client side (per token each way for per-step; once up and, pipelined, per token down
 * for server-generate), as the client-agent's link emulator does. Tokens of both paths are
 * checked to be identical.
 *
 *   npx tsx tools/bench/server-decode-bench.ts [--preset small] [--sessions 8] [--prompt 32] [--decode 32] [--reps 5] [--threads 2] [--latency 0] [--batching on] [--engine inline|worker] [--rounds on]
 */
import * as grpc from '@grpc/grpc-js';
import type { ExecutorServiceClient, SessionRequest, SessionResponse } from '@tandem/protocol';
import { OnnxStageEngine, WorkerStageEngine } from '@tandem/server-executor';
import { sleep } from '@tandem/util';
import { arg, benchModel, generationArgs, idsTensor, median, openSession, startBenchExecutor, stepRequest } from './bench-kit';

const { preset, sessions, promptLen, decode, reps, threads } = generationArgs(5);
const latencyMs = Number(arg('latency', '0'));
const batching = arg('batching', 'on') !== 'off';
/** Where onnxruntime runs, as EXECUTOR_ENGINE (the executor's default is the worker thread). */
const engineKind = arg('engine', 'inline');
/** Decode rounds (EXECUTOR_DECODE_ROUNDS): concurrent server-side decode steps as one engine call. */
const rounds = arg('rounds', 'on') !== 'off';
/** Tokens per generation: the prefill's, then one per decode step. */
const tokens = decode + 1;

type Call = grpc.ClientDuplexStream<SessionRequest, SessionResponse>;

/** What one generation produced: its tokens and when each reached the client (ms). */
interface Run {
  readonly tokens: number[];
  readonly at: number[];
}

/** Ends a session and waits for its OK status. */
function close(call: Call): Promise<void> {
  return new Promise((resolve, reject) => {
    call.on('status', (s: grpc.StatusObject) => (s.code === grpc.status.OK ? resolve() : reject(new Error(s.details))));
    call.on('error', reject);
    call.resume();
    call.end();
  });
}

/** The per-step path: one sampled step over every stage per token, a round trip each. */
async function perStep(client: ExecutorServiceClient, stageCount: number, prompt: number[]): Promise<Run> {
  const { call, next } = await openSession(client);
  const out: Run = { tokens: [], at: [] };
  let input = prompt;
  for (let i = 0; i < tokens; i++) {
    await sleep(latencyMs);
    call.write(stepRequest(i + 1, stageCount, input, true));
    const m = await next();
    if (m.kind?.$case !== 'result' || m.kind.value.output?.$case !== 'token') throw new Error('expected a token');
    await sleep(latencyMs);
    out.tokens.push(m.kind.value.output.value);
    out.at.push(performance.now());
    input = [m.kind.value.output.value];
  }
  await close(call);
  return out;
}

/** The server-generate path: one generate; each token crosses the emulated downlink as it arrives (delays overlap). */
async function serverGenerate(client: ExecutorServiceClient, prompt: number[]): Promise<Run> {
  const { call, next } = await openSession(client);
  await sleep(latencyMs);
  call.write({ kind: { $case: 'generate', value: { seq: '1', input: idsTensor(prompt), maxNewTokens: tokens } } });
  const delivered: Promise<number>[] = [];
  const got: number[] = [];
  for (let i = 0; i < tokens; i++) {
    const m = await next();
    if (m.kind?.$case !== 'token' || m.kind.value.index !== i) throw new Error('expected the next token');
    got.push(m.kind.value.token);
    delivered.push(sleep(latencyMs).then(() => performance.now()));
  }
  const at = await Promise.all(delivered);
  await close(call);
  return { tokens: got, at };
}

/** ms per decode token of one generation: the time between its first and last token over the tokens in between. */
const msPerToken = (r: Run): number => (r.at[r.at.length - 1] - r.at[0]) / (r.at.length - 1);

async function main(): Promise<void> {
  const dir = await benchModel(preset);
  if (engineKind !== 'worker' && engineKind !== 'inline') throw new Error(`--engine must be worker or inline, given '${engineKind.slice(0, 40)}'`);
  const engine =
    engineKind === 'worker'
      ? await WorkerStageEngine.load(dir, { intraOpNumThreads: threads })
      : await OnnxStageEngine.load(dir, { intraOpNumThreads: threads });
  const { client, stop } = await startBenchExecutor(engine, { maxSessions: 1024, maxMessageBytes: 64 << 20, batching, maxBatch: 64, decodeRounds: rounds });
  const prompts = Array.from({ length: sessions }, (_, s) => Array.from({ length: promptLen }, (_, i) => (101 + 37 * s + 13 * i) % 50257));
  type Mode = 'per-step' | 'server-generate';
  const res: Record<Mode, { msTok: number[]; tokS: number[] }> = { 'per-step': { msTok: [], tokS: [] }, 'server-generate': { msTok: [], tokS: [] } };
  const reference: number[][] = [];
  try {
    // one untimed round of each, so neither path pays a cold start
    await Promise.all(prompts.slice(0, 2).map((p) => serverGenerate(client, p)));
    await Promise.all(prompts.slice(0, 2).map((p) => perStep(client, engine.stageCount, p)));
    for (let r = 0; r < reps; r++) {
      const order: Mode[] = r % 2 === 0 ? ['per-step', 'server-generate'] : ['server-generate', 'per-step'];
      for (const mode of order) {
        const t0 = performance.now();
        const runs = await Promise.all(prompts.map((p) => (mode === 'per-step' ? perStep(client, engine.stageCount, p) : serverGenerate(client, p))));
        const wallS = (performance.now() - t0) / 1000;
        runs.forEach((x, i) => {
          reference[i] ??= x.tokens;
          if (x.tokens.join() !== reference[i].join()) throw new Error(`${mode} gave other tokens than the first run for generation ${i}`);
        });
        res[mode].msTok.push(median(runs.map(msPerToken)));
        res[mode].tokS.push((sessions * tokens) / wallS);
        process.stderr.write(`rep ${r + 1}/${reps} ${mode}: ${res[mode].msTok.at(-1)?.toFixed(2)} ms/token, ${res[mode].tokS.at(-1)?.toFixed(1)} tokens/s\n`);
      }
    }
  } finally {
    await stop();
  }
  const spread = (xs: number[], digits: number): string =>
    `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)})`;
  const ratio = (a: number[], b: number[]): number[] => a.map((x, i) => x / b[i]);
  const g = res['server-generate'];
  const p = res['per-step'];
  process.stdout.write(
    `\nserver-side decoding vs per-step, preset ${preset}, ${sessions} concurrent all-server generations, prompt ${promptLen}, ${tokens} tokens each, ` +
      `${threads} threads, ${engineKind} engine, batching ${batching ? 'on' : 'off'}, decode rounds ${rounds ? 'on' : 'off'}, one-way link latency ${latencyMs} ms; median (min–max) of ${reps} repetitions\n`,
  );
  process.stdout.write('| path | decode ms/token | tokens/s (all generations) |\n|---|---:|---:|\n');
  process.stdout.write(`| per-step (a round trip per token) | ${spread(p.msTok, 2)} | ${spread(p.tokS, 1)} |\n`);
  process.stdout.write(`| server-generate (tokens streamed) | ${spread(g.msTok, 2)} | ${spread(g.tokS, 1)} |\n`);
  process.stdout.write(`| ratio server-generate / per-step | ${spread(ratio(g.msTok, p.msTok), 2)}x | ${spread(ratio(g.tokS, p.tokS), 2)}x |\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${String(err)}\n`);
  process.exit(1);
});
