import * as path from 'node:path';
import { PRESETS, createModel } from '@tandem/model';
import { intFlag, parseArgs, required } from '../args';
import type { Command } from '../command';
import { UsageError } from '../errors';
import { type CliIo, printJson, progressReporter } from '../io';
import { toUsageError } from '../model-flags';

const USAGE = `usage: tandem model create --preset NAME --seed N --out DIR [--json]

Writes a synthetic GPT-2-family model with deterministic weights: the same preset and seed give
byte-identical files wherever DIR is. A previous model in DIR is replaced.

  --preset NAME   ${Object.entries(PRESETS)
    .map(([k, c]) => `${k} (${c.nLayer} layers, ${c.nEmbd} wide, ${c.nHead} heads)`)
    .join(', ')}
  --seed N        integer in 0..4294967295
  --out DIR       output directory (new, empty, or an existing model directory)
  --json          print {"out","preset","seed","config","stages"} on stdout`;

/** `tandem model create`: a synthetic model from a preset and a seed. */
export const modelCreateCommand: Command = {
  path: ['model', 'create'],
  summary: 'write a synthetic GPT-2-family model (deterministic weights)',
  usage: USAGE,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const args = parseArgs(argv, { flags: ['preset', 'seed', 'out'], switches: ['json'] });
    const preset = required(args, 'preset');
    if (!Object.prototype.hasOwnProperty.call(PRESETS, preset)) {
      throw new UsageError(`--preset must be one of ${Object.keys(PRESETS).join(', ')}, given '${preset}'`);
    }
    const seed = intFlag(args, 'seed', { min: 0, max: 0xffffffff });
    const out = required(args, 'out');
    const progress = progressReporter(io, `model create ${preset}`);
    let manifest;
    try {
      manifest = await createModel({
        preset,
        seed,
        out,
        onProgress: (done, total) => progress(done, total, `${(done / 1048576).toFixed(0)}/${(total / 1048576).toFixed(0)} MiB`),
      });
    } catch (err) {
      throw toUsageError(err);
    }
    if (args.switches.has('json')) printJson(io, { out: path.resolve(out), preset, seed, config: manifest.config, stages: manifest.stages.length });
    else io.stdout.write(`created model '${preset}' (seed ${seed}) in ${out}: ${manifest.stages.length} stages\n`);
    return 0;
  },
};
