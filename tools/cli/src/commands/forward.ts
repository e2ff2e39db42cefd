import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import { argmaxRow } from '@tandem/model';
import { parseArgs, required } from '../args';
import type { Command } from '../command';
import { type CliIo, printJson } from '../io';
import { idsFlag, loadPipeline, placementFlag, readModelFlag } from '../model-flags';

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
