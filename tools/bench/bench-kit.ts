/** Small helpers shared by the benchmarks in tools/bench (command-line flags, statistics, a model to run). */
import type * as grpc from '@grpc/grpc-js';
import { ensurePresetModel, presetModelDir } from '@tandem/launcher';
import type { ExecutorServiceClient, SessionRequest, SessionResponse } from '@tandem/protocol';

type Call = grpc.ClientDuplexStream<SessionRequest, SessionResponse>;

/** The value after `--name` on the command line, or `fallback`. */
export const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
};

/** Median of a non-empty list. */
export const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

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
