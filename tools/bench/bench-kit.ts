/** Small helpers shared by the benchmarks in tools/bench (command-line flags, statistics, a model to run). */
import * as grpc from '@grpc/grpc-js';
import { ensurePresetModel, presetModelDir } from '@tandem/launcher';
import { channelOptions, ExecutorServiceClient, toWireTensor, type SessionRequest, type SessionResponse } from '@tandem/protocol';
import { ExecutorServer, type ExecutorServerOptions, type StageEngine } from '@tandem/server-executor';
import { createLogger } from '@tandem/service-kit';
import { EXECUTOR_SETTINGS } from '@tandem/testkit';
import { median } from '@tandem/util';

type Call = grpc.ClientDuplexStream<SessionRequest, SessionResponse>;

/** The value after `--name` on the command line, or `fallback`. */
export const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
};

/** Median of a non-empty list and a sample's quantile (the benches import them from here). */
export { median, quantile } from '@tandem/util';

/** A sample's median and range. */
export type Spread = { median: number; min: number; max: number };
/** The median and range of a non-empty sample. */
export const spread = (xs: number[]): Spread => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs) });
/** `median (min-max)` with `d` decimals. */
export const formatSpread = (x: Spread, d = 2): string => `${x.median.toFixed(d)} (${x.min.toFixed(d)}-${x.max.toFixed(d)})`;

/** Figures `X` of each variant `V` ('monolithic' among them), and `R`, each other variant's ratios over the monolithic one. */
export type VsMonolithic<V extends string, X, R> = Partial<Record<V, X>> & Partial<Record<`${Exclude<V, 'monolithic'>}VsMonolithic`, R>>;

/**
 * The rows of a table against one monolithic graph: each variant of `labels` that `r` measured,
 * in that order, with its label, its figures and its ratios over the monolithic graph (none
 * for the monolithic graph itself).
 */
export function vsMonolithicRows<V extends string, X, R>(
  r: VsMonolithic<V, X, R>,
  labels: readonly (readonly [V, string])[],
): { label: string; x: X; rel: R | undefined }[] {
  const rows: { label: string; x: X; rel: R | undefined }[] = [];
  for (const [v, label] of labels) {
    const x = r[v] as X | undefined;
    if (!x) continue; // every variant is measured: never
    const rel = v === 'monolithic' ? undefined : (r[`${v}VsMonolithic` as `${Exclude<V, 'monolithic'>}VsMonolithic`] as R | undefined);
    rows.push({ label, x, rel });
  }
  return rows;
}

/** The directory of the synthetic model of `preset` (seed 1) in the model cache (presetModelDir, or `dir`), created when missing. */
export async function benchModel(preset: string, dir = presetModelDir(preset)): Promise<string> {
  await ensurePresetModel(preset, dir, (done) => {
    if (done === 0) process.stderr.write(`creating the ${preset} model in ${dir}\n`);
  });
  return dir;
}

/** Opens an executor session and returns it with a reader of its answers (the `opened` one consumed). */
export async function openSession(client: ExecutorServiceClient): Promise<{ call: Call; next: () => Promise<SessionResponse> }> {
  const call: Call = client.session({ deadline: Date.now() + 600_000 });
  const it = call[Symbol.asyncIterator]() as AsyncIterator<SessionResponse>;
  const next = async (): Promise<SessionResponse> => {
    const r = await it.next();
    if (r.done) throw new Error('the executor ended the session early');
    return r.value;
  };
  call.write({ kind: { $case: 'open', value: { clientId: 'bench', planEpoch: '0', modelId: '' } } });
  if ((await next()).kind?.$case !== 'opened') throw new Error('expected opened');
  return { call, next };
}

/**
 * One timed session on `client`: open, then `steps` steps through stages 0 to `stageEnd`, the
 * first sending `prompt`, each later one the token the step before sampled (`sample`; 1 without).
 * Resolves with the time of each step after the first, ms.
 */
export function timedSession(client: ExecutorServiceClient, prompt: readonly number[], steps: number, stageEnd: number, sample: boolean): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const call: Call = client.session({ deadline: Date.now() + 600_000 });
    const times: number[] = [];
    let seq = 0;
    let t0 = 0;
    const send = (ids: readonly number[]): void => {
      seq++;
      t0 = performance.now();
      call.write(stepRequest(seq, stageEnd, ids, sample));
    };
    call.on('data', (m: SessionResponse) => {
      if (m.kind?.$case === 'opened') {
        send(prompt);
        return;
      }
      const out = m.kind?.$case === 'result' ? m.kind.value.output : undefined;
      if (m.kind?.$case !== 'result' || (sample && out?.$case !== 'token')) {
        reject(new Error(sample ? 'expected a result with a token' : 'expected a result'));
        return;
      }
      if (seq > 1) times.push(performance.now() - t0);
      if (seq >= steps) {
        call.end();
        return;
      }
      send([out?.$case === 'token' ? out.value : 1]);
    });
    call.on('error', reject);
    call.on('end', () => resolve(times));
    call.write({ kind: { $case: 'open', value: { clientId: 'bench', planEpoch: '0', modelId: '' } } });
  });
}

/** The flags of the benchmarks that run concurrent generations on one executor: --preset, --sessions, --prompt, --decode, --reps and --threads. */
export function generationArgs(defaultReps: number): { preset: string; sessions: number; promptLen: number; decode: number; reps: number; threads: number } {
  return {
    preset: arg('preset', 'small'),
    sessions: Number(arg('sessions', '8')),
    promptLen: Number(arg('prompt', '32')),
    decode: Number(arg('decode', '32')),
    reps: Number(arg('reps', String(defaultReps))),
    threads: Number(arg('threads', '2')),
  };
}

/** An executor the benchmarks run, listening, with a plaintext client that accepts its largest message. */
export interface BenchExecutor {
  readonly server: ExecutorServer;
  readonly client: ExecutorServiceClient;
  /** host:port it listens on. */
  readonly addr: string;
  /** Closes the client and stops the executor at once. */
  stop(): Promise<void>;
}

/**
 * Starts executor 'bench' on `engine`, silent, with the tests' settings (EXECUTOR_SETTINGS), a
 * 10-minute idle timeout and telemetry each second; with `over` on top.
 */
export async function startBenchExecutor(engine: StageEngine, over: Partial<ExecutorServerOptions> = {}): Promise<BenchExecutor> {
  const server = new ExecutorServer({
    engine,
    log: createLogger({ name: 'bench', level: 'silent' }),
    ...EXECUTOR_SETTINGS,
    serverId: 'bench',
    idleTimeoutMs: 600_000,
    telemetryIntervalMs: 1000,
    ...over,
  });
  const addr = `127.0.0.1:${(await server.start()).port}`;
  const client = new ExecutorServiceClient(addr, grpc.credentials.createInsecure(), channelOptions(over.maxMessageBytes ?? EXECUTOR_SETTINGS.maxMessageBytes));
  return {
    server,
    client,
    addr,
    stop: async () => {
      client.close();
      await server.stop({ graceMs: 0 });
    },
  };
}

/** A seeded prompt of `n` token ids in 1..1000 (the same for the same `n` and `seed`). */
export const seededPrompt = (n: number, seed: number): number[] => Array.from({ length: n }, (_, i) => 1 + ((i * 7919 + seed * 104729) % 1000));

/** Token ids as the int64 [1, n] tensor a step or a generate carries. */
export const idsTensor = (ids: readonly number[]): ReturnType<typeof toWireTensor> =>
  toWireTensor({ dtype: 'int64', shape: [1, ids.length], data: BigInt64Array.from(ids, BigInt) });

/** Step `seq` of a session: `ids` through stages 0 to `stageEnd`; with `sample`, the head's token comes back. */
export const stepRequest = (seq: number, stageEnd: number, ids: readonly number[], sample: boolean): SessionRequest => ({
  kind: { $case: 'step', value: { seq: String(seq), stageBegin: 0, stageEnd, input: idsTensor(ids), sample } },
});
