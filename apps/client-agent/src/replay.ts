import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { greedyToken, readManifest, StageRunner, type Float32Tensor } from '@tandem/model';
import type { HostTensor, StageTiming } from '@tandem/protocol';

/**
 * EMULATION only (load tests on one machine): device-stage outputs recorded once from a real
 * one-process run of the model and replayed by emulated devices, so that hundreds of emulated
 * devices can share one core without their timing depending on each other (a replayed stage
 * costs a table look-up and a timer, not the stage's compute).
 *
 * What is recorded, per prompt of a finite pool: the greedy continuation of `maxNewTokens`
 * tokens, and for every step of it (step 0 = the prefill of the prompt, step k = the decode of
 * generated token k-1) the output of every stage but the head (hidden states [1, T, nEmbd],
 * float32 exactly as onnxruntime gave them). The head's output is kept as the token it
 * yields, and replayed as that token (as a server step with `sample` answers): on a device
 * the logits are only ever reduced to the greedy token, and a vocabulary-wide row per token
 * would cost the emulation more than the rest of a token. A step's outputs
 * are a function of the whole token history (prompt + tokens so far), which the prompt and
 * the step index determine as long as the tokens follow the recording; a generation whose
 * tokens leave the recording (or whose prompt is not in the pool) has a history the recording
 * does not hold, and looking it up throws {@link ReplayMissError} instead of returning a wrong
 * value. Also recorded: each stage's uncontended cost on the recording host (prefill ms per
 * token, decode ms per step), the cost a replayed stage is timed to (× the slow-down), and the
 * keys and values every attention stage holds after the prompt's prefill: a phased plan that
 * prefills on the device and decodes on the server hands them to the executor (kv_put), which
 * must receive the real values to decode the recorded tokens. Only the prefill's are kept: the
 * hand-over happens once, between the prefill and the decode (a cache after decode step k
 * would cost the recording T0 + k positions per step).
 *
 * File layout (little-endian): the 8-byte magic, then the float32 data of every prompt
 * (per prompt: step 0's stages in order, each [T0, nEmbd], then each decode step's stages,
 * each [1, nEmbd], then, at the prompt's `kvOffset`, for each of `kvStages` in order the keys
 * and then the values after the prefill, each [nHead, T0, nEmbd / nHead]), then the header as
 * UTF-8 JSON ({@link ReplayHeader}), its byte length as uint32, and the magic again. A
 * recording without `kvStages` (made before they were recorded) still replays; only a
 * hand-over from the device misses.
 */

const MAGIC = Buffer.from('TNDRPL01', 'latin1');

/** Uncontended cost of one stage on the recording host. */
export type ReplayStageCost = Omit<StageTiming, 'samples'>;

/** One prompt of the pool and its recorded greedy continuation. */
export interface ReplayPrompt {
  readonly ids: readonly number[];
  /** The tokens a one-process run generated, in order. */
  readonly tokens: readonly number[];
  /** Offset of the prompt's data from the start of the data section, in float32 elements. */
  readonly offset: number;
  /** Offset of the keys and values after the prefill (see the file layout), float32 elements; absent in older recordings. */
  readonly kvOffset?: number;
}

/** The header of a recording file. */
export interface ReplayHeader {
  readonly format: 'tandem-replay/1';
  /** Model it was recorded from: manifest-derived id, stage count, nEmbd and vocabulary size must match the agent's. */
  readonly modelId: string;
  readonly stageCount: number;
  readonly nEmbd: number;
  readonly vocabSize: number;
  readonly costs: readonly ReplayStageCost[];
  readonly prompts: readonly ReplayPrompt[];
  /** Attention heads of the model (the layout of the recorded keys and values); with `kvStages`. */
  readonly nHead?: number;
  /** The attention stages whose keys and values after the prefill are recorded, ascending; absent in older recordings. */
  readonly kvStages?: readonly number[];
}

/** A history that is not in the recording (prompt not in the pool, or tokens that left it). */
export class ReplayMissError extends Error {
  override name = 'ReplayMissError';
}

/** A recording file that cannot be used: names the file and the rule broken. */
export class ReplayFormatError extends Error {
  override name = 'ReplayFormatError';
}

const keyOf = (ids: readonly number[]): string => ids.join(',');

/** A loaded recording: the header and one float32 view on the data (no per-entry copies). */
export class ReplayRecording {
  private readonly byPrompt = new Map<string, ReplayPrompt>();
  private constructor(
    readonly header: ReplayHeader,
    private readonly data: Float32Array,
    readonly bytes: number,
  ) {
    for (const p of header.prompts) this.byPrompt.set(keyOf(p.ids), p);
  }

  /**
   * Reads a recording and checks it against the model the agent serves. `source` is what the
   * path came as (the agent's variable, or the load test's `--replay`), named in every error.
   * @throws ReplayFormatError naming the source, the file and what is wrong.
   */
  static load(path: string, model: { modelId: string; stageCount: number; nEmbd: number; vocabSize: number }, source = 'AGENT_REPLAY_FILE'): ReplayRecording {
    let buf: Buffer;
    try {
      buf = readFileSync(path);
    } catch (err) {
      throw new ReplayFormatError(
        `${source} must name a readable recording, given '${path}' (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
      );
    }
    const bad = (rule: string): never => {
      throw new ReplayFormatError(`${source} ${path} must be ${rule}`);
    };
    if (buf.length < 20 || !buf.subarray(0, 8).equals(MAGIC) || !buf.subarray(buf.length - 8).equals(MAGIC))
      bad('a tandem replay recording (magic TNDRPL01 at both ends)');
    const headerLen = buf.readUInt32LE(buf.length - 12);
    const headerStart = buf.length - 12 - headerLen;
    if (headerStart < 8 || (headerStart - 8) % 4 !== 0) bad(`a whole recording (header length ${headerLen} does not fit)`);
    let header: ReplayHeader;
    try {
      header = JSON.parse(buf.toString('utf8', headerStart, buf.length - 12)) as ReplayHeader;
    } catch (err) {
      return bad(`a recording with a JSON header (${(err as Error).message})`);
    }
    if (header.format !== 'tandem-replay/1') bad(`format tandem-replay/1, given ${JSON.stringify(header.format)}`);
    for (const k of ['modelId', 'stageCount', 'nEmbd', 'vocabSize'] as const) {
      if (header[k] !== model[k]) bad(`recorded from this model (${k} ${JSON.stringify(model[k])}), given ${JSON.stringify(header[k])}`);
    }
    const isCount = (v: unknown): boolean => Number.isInteger(v) && (v as number) >= 0;
    const isIds = (v: unknown): boolean => Array.isArray(v) && v.every((x) => isCount(x) && (x as number) < model.vocabSize);
    if (
      !Array.isArray(header.costs) ||
      header.costs.length !== model.stageCount ||
      !header.costs.every((c, i) => c?.stage === i && [c.prefillMsPerToken, c.decodeMs].every((x) => typeof x === 'number' && Number.isFinite(x) && x >= 0))
    ) {
      bad(`a recording with one cost {stage, prefillMsPerToken >= 0, decodeMs >= 0} per stage in order (${model.stageCount})`);
    }
    if (!Array.isArray(header.prompts)) bad('a recording with a prompts array');
    header.prompts.forEach((p, i) => {
      if (!isIds(p?.ids) || p.ids.length === 0 || !isIds(p.tokens) || !isCount(p.offset))
        bad(`a recording whose prompts[${i}] has non-empty ids, tokens (ids in the vocabulary) and an offset >= 0`);
    });
    if (header.kvStages !== undefined) {
      const { kvStages, nHead } = header;
      if (
        !Array.isArray(kvStages) ||
        !kvStages.every((s, i) => isCount(s) && s < model.stageCount && (i === 0 || s > kvStages[i - 1])) ||
        !Number.isInteger(nHead) ||
        (nHead as number) < 1 ||
        model.nEmbd % (nHead as number) !== 0
      )
        bad(`a recording whose kvStages are ascending stage indices and nHead a divisor of nEmbd (${model.nEmbd})`);
      header.prompts.forEach((p, i) => {
        if (!isCount(p.kvOffset)) bad(`a recording whose prompts[${i}] has a kvOffset >= 0 (the recording has kvStages)`);
      });
    }
    const floats = (headerStart - 8) / 4;
    // A view on the file's bytes when they are 4-byte aligned (large reads are); else one copy.
    const aligned = (buf.byteOffset + 8) % 4 === 0;
    const data = aligned
      ? new Float32Array(buf.buffer, buf.byteOffset + 8, floats)
      : new Float32Array(buf.buffer.slice(buf.byteOffset + 8, buf.byteOffset + 8 + floats * 4));
    const rec = new ReplayRecording(header, data, buf.length);
    for (const p of header.prompts) {
      if (p.offset + rec.floatsOf(p) > floats) bad(`complete (prompt data at ${p.offset} runs past the end)`);
      if (p.kvOffset !== undefined && p.kvOffset + rec.kvFloatsOf(p) > floats) bad(`complete (prompt keys and values at ${p.kvOffset} run past the end)`);
    }
    return rec;
  }

  /** Float32 elements one prompt's data holds. */
  floatsOf(p: ReplayPrompt): number {
    const { stageCount, nEmbd } = this.header;
    return (stageCount - 1) * nEmbd * (p.ids.length + Math.max(0, p.tokens.length - 1));
  }

  /** Float32 elements of one prompt's keys and values after the prefill (0 when the recording has none). */
  kvFloatsOf(p: ReplayPrompt): number {
    return 2 * (this.header.kvStages?.length ?? 0) * p.ids.length * this.header.nEmbd;
  }

  /**
   * The keys and values attention stage `stage` held after the prefill of `p` (views on the
   * recording, [1, nHead, T0, nEmbd / nHead]: read them, never write them), or undefined when the
   * recording has none for it.
   */
  prefillKv(p: ReplayPrompt, stage: number): { key: Float32Tensor; value: Float32Tensor } | undefined {
    const { kvStages, nHead, nEmbd } = this.header;
    const k = kvStages?.indexOf(stage) ?? -1;
    if (k < 0 || p.kvOffset === undefined || nHead === undefined) return undefined;
    const T = p.ids.length;
    const n = T * nEmbd;
    const shape = [1, nHead, T, nEmbd / nHead];
    const at = p.kvOffset + 2 * k * n;
    return {
      key: { dtype: 'float32', shape, data: this.data.subarray(at, at + n) },
      value: { dtype: 'float32', shape, data: this.data.subarray(at + n, at + 2 * n) },
    };
  }

  /** The pool entry of a prompt, or undefined when it is not in the pool. */
  prompt(ids: readonly number[]): ReplayPrompt | undefined {
    return this.byPrompt.get(keyOf(ids));
  }

  /** A cursor for one generation over `promptIds` (valid even when the prompt is not in the pool: lookups then miss). */
  cursor(promptIds: readonly number[]): ReplayCursor {
    return new ReplayCursor(this, promptIds.length, this.prompt(promptIds));
  }

  /**
   * The recorded output of `stage` at `step` of `p`: a hidden state (a view on the recording,
   * not a copy: read it, never write it), or for the head its greedy token.
   */
  output(p: ReplayPrompt, step: number, stage: number): HostTensor | number {
    const { stageCount, nEmbd } = this.header;
    if (stage === stageCount - 1) return p.tokens[step];
    const T = step === 0 ? p.ids.length : 1;
    const base = p.offset + (step === 0 ? 0 : (stageCount - 1) * nEmbd * (p.ids.length + step - 1));
    const at = base + stage * T * nEmbd;
    return { dtype: 'float32', shape: [1, T, nEmbd], data: this.data.subarray(at, at + T * nEmbd) };
  }
}

/**
 * One generation's position in the recording: its prompt entry and the tokens seen so far.
 * Invariant: while `diverged` is unset, the history (prompt + tokens seen) equals the
 * recorded history at step `step`.
 */
export class ReplayCursor {
  private step = 0;
  private diverged: string | undefined;

  constructor(
    private readonly rec: ReplayRecording,
    private readonly promptLength: number,
    private readonly entry: ReplayPrompt | undefined,
  ) {}

  /** Tells the cursor the token the generation produced (the history grows by it). */
  advance(token: number): void {
    if (this.entry && this.diverged === undefined && this.entry.tokens[this.step] !== token) {
      this.diverged = `token ${this.step} is ${token}, the recording has ${this.entry.tokens[this.step] ?? 'no token there'}`;
    }
    this.step++;
  }

  /**
   * Tokens each stage holds before the next step: the prompt after the prefill, one more per
   * decode step since (0 before the prefill).
   */
  heldTokens(): number {
    return this.step === 0 ? 0 : this.promptLength + this.step - 1;
  }

  /**
   * The keys and values attention stage `stage` holds after the prefill (to hand them to the
   * server between the phases of a phased plan): only between the prefill and the first decode
   * step, the one point a hand-over happens and the recording keeps them.
   * @throws ReplayMissError when the history is not in the recording, or it holds no keys and values there.
   */
  prefillKv(stage: number): { key: Float32Tensor; value: Float32Tensor } {
    const e = this.entry;
    if (!e) throw new ReplayMissError(`replay miss: a prompt of ${this.promptLength} tokens is not in the recorded pool`);
    if (this.diverged !== undefined) throw new ReplayMissError(`replay miss: the generation left the recording (${this.diverged})`);
    if (this.step !== 1)
      throw new ReplayMissError(`replay miss: the recording keeps the keys and values after the prefill only, asked after ${this.step} tokens`);
    const kv = this.rec.prefillKv(e, stage);
    if (!kv)
      throw new ReplayMissError(
        `replay miss: the recording holds no keys and values of stage ${stage} (recorded before they were kept, or not an attention stage)`,
      );
    return kv;
  }

  /**
   * The recorded output of `stage` for the current history, checked against the step's length.
   * @throws ReplayMissError when the history is not in the recording.
   */
  output(stage: number, tokens: number): HostTensor | number {
    const e = this.entry;
    if (!e) throw new ReplayMissError(`replay miss: a prompt of ${this.promptLength} tokens is not in the recorded pool`);
    if (this.diverged !== undefined) throw new ReplayMissError(`replay miss: the generation left the recording (${this.diverged})`);
    if (this.step >= e.tokens.length) throw new ReplayMissError(`replay miss: step ${this.step} is beyond the ${e.tokens.length} recorded tokens`);
    const want = this.step === 0 ? this.promptLength : 1;
    // The head may run on the prompt's last position only (only the next token is needed).
    const lastRowHead = stage === this.rec.header.stageCount - 1 && tokens === 1;
    if (tokens !== want && !lastRowHead)
      throw new ReplayMissError(`replay miss: step ${this.step} of stage ${stage} runs ${tokens} tokens, the recording has ${want}`);
    return this.rec.output(e, this.step, stage);
  }
}

/** What to record: a pool of prompts, each with the number of tokens to generate. */
export interface RecordOptions {
  readonly modelDir: string;
  readonly modelId: string;
  readonly prompts: readonly { readonly ids: readonly number[]; readonly maxNewTokens: number }[];
  readonly out: string;
  /** Called after each prompt: prompts done, prompts in all. */
  readonly onProgress?: (done: number, total: number) => void;
}

const median = (xs: number[]): number => {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)];
};

/**
 * Records a pool with a real one-process run of every stage (one thread, the KV cache) and
 * writes the file. The costs are medians over the pool of each stage's time per prefill
 * token and per decode step (the first prompt, which pays onnxruntime's lazy start, is run
 * twice and timed the second time).
 * @returns the header written and the file size, bytes.
 */
export async function recordReplay(o: RecordOptions): Promise<{ header: ReplayHeader; bytes: number }> {
  const manifest = await readManifest(o.modelDir);
  const { nEmbd, vocabSize } = manifest.config;
  const S = manifest.stages.length;
  const runner = await StageRunner.load(o.modelDir, { intraOpNumThreads: 1 });
  const fd = openSync(o.out, 'w');
  let written = 0;
  const write = (b: Buffer | Uint8Array): void => {
    writeSync(fd, b);
    written += b.byteLength;
  };
  const prefill: number[][] = Array.from({ length: S }, () => []);
  const decode: number[][] = Array.from({ length: S }, () => []);
  const prompts: ReplayPrompt[] = [];
  const kvStages = manifest.stages.filter((st) => st.kind === 'attn').map((st) => st.index);
  let offset = 0;
  try {
    write(MAGIC);
    for (let i = 0; i < o.prompts.length; i++) {
      const { ids, maxNewTokens } = o.prompts[i];
      /** The keys and values after the prefill, written after the prompt's outputs. */
      const kv: Float32Tensor[] = [];
      const runOnce = async (keep: boolean): Promise<number[]> => {
        const cache = runner.newCache();
        const tokens: number[] = [];
        try {
          let next: readonly number[] = ids;
          for (let step = 0; step < maxNewTokens; step++) {
            let x: HostTensor = { dtype: 'int64', shape: [1, next.length], data: BigInt64Array.from(next, (v) => BigInt(v)) };
            for (let s = 0; s < S; s++) {
              const t0 = performance.now();
              x = await runner.run(s, x, cache);
              const ms = performance.now() - t0;
              if (!keep) continue;
              if (step === 0) prefill[s].push(ms / next.length);
              else decode[s].push(ms);
              if (s < S - 1) {
                const f = x.data as Float32Array;
                write(new Uint8Array(f.buffer, f.byteOffset, f.byteLength));
                offset += f.length;
              }
            }
            if (keep && step === 0) {
              for (const s of kvStages) {
                const st = runner.exportState(s, cache);
                if (!st.key || !st.value) throw new Error(`recordReplay: attention stage ${s} holds no keys and values after the prefill`);
                kv.push(st.key, st.value);
              }
            }
            const tok = greedyToken(x as { data: Float32Array }, vocabSize);
            tokens.push(tok);
            next = [tok];
          }
          return tokens;
        } finally {
          cache.clear();
        }
      };
      if (i === 0) await runOnce(false);
      const start = offset;
      const tokens = await runOnce(true);
      const kvOffset = offset;
      for (const t of kv) {
        write(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
        offset += t.data.length;
      }
      prompts.push({ ids: [...ids], tokens, offset: start, kvOffset });
      o.onProgress?.(i + 1, o.prompts.length);
    }
    const header: ReplayHeader = {
      format: 'tandem-replay/1',
      modelId: o.modelId,
      stageCount: S,
      nEmbd,
      vocabSize,
      costs: Array.from({ length: S }, (_, s) => ({ stage: s, prefillMsPerToken: median(prefill[s]), decodeMs: median(decode[s]) })),
      prompts,
      nHead: manifest.config.nHead,
      kvStages,
    };
    const json = Buffer.from(JSON.stringify(header), 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32LE(json.length);
    write(json);
    write(len);
    write(MAGIC);
    return { header, bytes: written };
  } finally {
    closeSync(fd);
    await runner.close();
  }
}
