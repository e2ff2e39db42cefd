import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import { type Manifest, type Placement, SplitPipeline, argmaxRow, isModelInputError, parsePlacement, readManifest } from '@tandem/model';
import { parseArgs, required } from '../args';
import type { Command } from '../command';
import { UsageError } from '../errors';
import { type CliIo, printJson } from '../io';

// Library field names that correspond to a CLI flag, so messages name what the user typed.
const FLAG_OF: Readonly<Record<string, string>> = {
  placement: '--placement', preset: '--preset', seed: '--seed', out: '--out', maxNewTokens: '--max-new-tokens', prompt: '--prompt',
};

/**
 * Turns the model library's bad-input errors into a UsageError (exit 2) whose line names the flag,
 * the rule and the value; `source` names the flag of the directory read (e.g. `--model DIR`) for
 * errors about that directory's contents. Anything else is returned unchanged (exit 1).
 */
export function toUsageError(err: unknown, source?: string): unknown {
  if (!isModelInputError(err)) return err;
  const flag = FLAG_OF[err.field];
  if (flag && err.name === 'ModelOptionError') return new UsageError(`${flag} must ${err.rule}, given ${err.given}`, { cause: err });
  return new UsageError(source ? `${source}: ${err.message}` : err.message, { cause: err });
}

/** Reads the manifest of `--model`, mapping a bad directory to exit 2. */
export async function readModelFlag(dir: string): Promise<Manifest> {
  try {
    return await readManifest(dir);
  } catch (err) {
    throw toUsageError(err, `--model ${dir}`);
  }
}

/** Parses `--placement` against the model's stage count. @throws UsageError */
export function placementFlag(value: string, manifest: Manifest): Placement {
  try {
    return parsePlacement(value, manifest.stages.length);
  } catch (err) {
    throw toUsageError(err);
  }
}

/**
 * Parses a comma-separated list of token ids (`15496,11,995`) and checks each against the model's
 * vocabulary. @throws UsageError naming `flag`, the rule and the value.
 */
export function idsFlag(flag: string, value: string, manifest: Manifest): number[] {
  const V = manifest.config.vocabSize;
  const parts = value.split(',').map((s) => s.trim());
  if (value.trim() === '' || parts.some((p) => !/^\d+$/.test(p))) {
    throw new UsageError(`${flag} must be a comma-separated list of token ids (non-negative integers), given '${value}'`);
  }
  const ids = parts.map(Number);
  const bad = ids.findIndex((id) => !Number.isSafeInteger(id) || id >= V);
  if (bad >= 0) throw new UsageError(`${flag} must hold token ids in 0..${V - 1} (the model's vocabulary), given ${parts[bad]} at position ${bad} in '${value}'`);
  if (ids.length > manifest.config.nPositions) {
    throw new UsageError(`${flag} must hold at most nPositions = ${manifest.config.nPositions} ids, given ${ids.length}`);
  }
  return ids;
}

/** Loads the split pipeline for a CLI command, mapping bad input to exit 2. */
export async function loadPipeline(dir: string, placement: Placement): Promise<SplitPipeline> {
  try {
    return await SplitPipeline.load(dir, placement);
  } catch (err) {
    throw toUsageError(err, `--model ${dir}`);
  }
}

/** Raw little-endian float32 bytes of `data` (a view on little-endian hosts, a swapped copy otherwise). */
function littleEndianBytes(data: Float32Array): Uint8Array {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (os.endianness() === 'LE') return bytes;
  const copy = Buffer.from(bytes);
  copy.swap32();
  return copy;
}

const USAGE = `usage: tandem forward --model DIR --ids 15496,11,995 --placement PLACEMENT --out FILE [--json]

One forward pass (prefill, no generation) over the token ids, executed stage by stage: stages
marked C in PLACEMENT run in a client-side runner and those marked S in a server-side runner
(separate sessions and caches), handing the hidden state across.

  --model DIR          model directory (manifest.json + stages/)
  --ids LIST           comma-separated token ids, each in 0..vocabSize-1
  --placement P        one C/S character per stage (2*nLayer+2 characters)
  --out FILE           where to write the logits [n, vocabSize], raw little-endian float32, row-major
  --json               print {"tokens","stages","placement","argmax"} on stdout`;

/** `tandem forward`: one split forward pass, logits to a file. */
export const forwardCommand: Command = {
  path: ['forward'],
  summary: 'run one split forward pass over token ids and write the logits',
  usage: USAGE,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const args = parseArgs(argv, { flags: ['model', 'ids', 'placement', 'out'], switches: ['json'] });
    const dir = required(args, 'model');
    const idsText = required(args, 'ids');
    const placementText = required(args, 'placement');
    const out = required(args, 'out');
    const manifest = await readModelFlag(dir);
    const placement = placementFlag(placementText, manifest);
    const ids = idsFlag('--ids', idsText, manifest);
    const pipeline = await loadPipeline(dir, placement);
    try {
      const logits = await pipeline.forward(ids);
      const V = manifest.config.vocabSize;
      await fsp.writeFile(out, littleEndianBytes(logits.data));
      const argmax = ids.map((_, t) => argmaxRow(logits.data, V, t));
      if (args.switches.has('json')) {
        printJson(io, { tokens: ids.length, stages: manifest.stages.length, placement: placementText, argmax });
      } else {
        io.stdout.write(`wrote logits [${ids.length}, ${V}] to ${out} (placement ${placementText})\nargmax: ${argmax.join(',')}\n`);
      }
      return 0;
    } finally {
      await pipeline.close();
    }
  },
};
