/**
 * The reference the benchmarks compare the served paths with: the whole model as ONE ONNX graph
 * built from its stage graphs (buildFusedGraph: same nodes, same external weights, past/present
 * K/V per block), run with nothing but a plain onnxruntime-node InferenceSession. Shared by
 * model-bench.ts and served-decode-bench.ts.
 */
import * as ort from 'onnxruntime-node';
import { FUSED_IO, type Manifest, buildFusedGraph, fusedSessionConfig } from '@tandem/model';

const now = (): number => performance.now();

/** The id of the largest of the last `V` logits (greedy sampling of the last position). */
export const argmaxLast = (logits: Float32Array, V: number): number => {
  const base = logits.length - V;
  let best = 0;
  for (let j = 1; j < V; j++) if (logits[base + j] > logits[base + best]) best = j;
  return best;
};

/** One generation's figures: prefill (last-row logits) ms, decode ms/token, the tokens, the first decode step's logits. */
export interface GenRun {
  prefillMs: number;
  decodeMs: number;
  decodeCpuMs: number;
  tokens: number[];
  firstDecodeLogits: Float32Array;
}

/** CPU time of this process (all threads, user + system), ms. */
export const cpuMs = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/**
 * Greedy generation through `step` (ids in, the last position's logits out), timed: the
 * prefill's wall time, and each decode step's wall and process CPU time.
 */
export async function timeGeneration(
  step: (ids: readonly number[]) => Promise<Float32Array>,
  prompt: readonly number[],
  newTokens: number,
  vocab: number,
): Promise<GenRun> {
  let t = now();
  let logits = await step(prompt);
  const prefillMs = now() - t;
  const tokens: number[] = [];
  let firstDecodeLogits: Float32Array = new Float32Array(0);
  const c0 = cpuMs();
  t = now();
  for (let k = 0; k < newTokens; k++) {
    const tok = argmaxLast(logits, vocab);
    tokens.push(tok);
    logits = await step([tok]);
    if (k === 0) firstDecodeLogits = logits;
  }
  const decodeMs = (now() - t) / newTokens;
  return { prefillMs, decodeMs, decodeCpuMs: (cpuMs() - c0) / newTokens, tokens, firstDecodeLogits };
}

/**
 * The whole model as ONE onnxruntime-node session (the reference a server would otherwise run):
 * the stage graphs composed into one graph, driven here with nothing but session.run, feeding
 * each step's present K/V back as the next step's past.
 */
export class Monolithic {
  private constructor(
    private readonly session: ort.InferenceSession,
    private readonly manifest: Manifest,
  ) {}

  static async load(dir: string, manifest: Manifest, threads: number, spin: boolean): Promise<Monolithic> {
    const bytes = await buildFusedGraph(dir, manifest, 0, manifest.stages.length);
    const session = await ort.InferenceSession.create(bytes, {
      graphOptimizationLevel: 'all',
      executionMode: 'sequential',
      intraOpNumThreads: threads,
      extra: { session: { ...fusedSessionConfig(dir), intra_op: { allow_spinning: spin ? '1' : '0' } } },
    });
    return new Monolithic(session, manifest);
  }

  async generate(prompt: readonly number[], newTokens: number): Promise<GenRun> {
    const { nHead: H, nEmbd: D, vocabSize: V } = this.manifest.config;
    const attn = this.manifest.stages.filter((s) => s.kind === 'attn').map((s) => s.index);
    const empty = new ort.Tensor('float32', new Float32Array(0), [1, H, 0, D / H]);
    const past = new Map<number, [ort.Tensor, ort.Tensor]>(attn.map((i) => [i, [empty, empty]]));
    let pos = 0;
    const step = async (ids: readonly number[]): Promise<Float32Array> => {
      const T = ids.length;
      const feeds: Record<string, ort.Tensor> = {
        input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, T]),
        position_ids: new ort.Tensor(
          'int64',
          BigInt64Array.from(ids, (_, t) => BigInt(pos + t)),
          [1, T],
        ),
        [FUSED_IO.headStart]: new ort.Tensor('int64', BigInt64Array.of(BigInt(T - 1)), [1]),
      };
      for (const [i, [k, v]] of past) {
        feeds[FUSED_IO.pastKey(i)] = k;
        feeds[FUSED_IO.pastValue(i)] = v;
      }
      const r = await this.session.run(feeds);
      for (const i of attn) past.set(i, [r[FUSED_IO.presentKey(i)], r[FUSED_IO.presentValue(i)]]);
      pos += T;
      return r.logits.data as Float32Array;
    };
    return timeGeneration(step, prompt, newTokens, V);
  }

  async close(): Promise<void> {
    await this.session.release();
  }
}
