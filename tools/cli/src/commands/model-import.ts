import * as path from 'node:path';
import { importHfModel } from '@tandem/model';
import { parseArgs, required } from '../args';
import type { Command } from '../command';
import { type CliIo, printJson, progressReporter } from '../io';
import { toUsageError } from '../model-flags';

const USAGE = `usage: tandem model import --from HF_DIR --out DIR [--json]

Converts a Hugging Face GPT-2 checkpoint folder (config.json + model.safetensors; F32, F16 or BF16
tensors, names with or without the 'transformer.' prefix) into a model directory.

  --from HF_DIR   checkpoint folder
  --out DIR       output directory (new, empty, or an existing model directory)
  --json          print {"out","config","stages"} on stdout`;

/** `tandem model import`: a Hugging Face GPT-2 checkpoint to a model directory. */
export const modelImportCommand: Command = {
  path: ['model', 'import'],
  summary: 'convert a Hugging Face GPT-2 checkpoint into a model directory',
  usage: USAGE,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const args = parseArgs(argv, { flags: ['from', 'out'], switches: ['json'] });
    const from = required(args, 'from');
    const out = required(args, 'out');
    const progress = progressReporter(io, 'model import');
    let manifest;
    try {
      manifest = await importHfModel({ from, out, onProgress: (done, total, what) => progress(done, total, what) });
    } catch (err) {
      throw toUsageError(err, `--from ${from}`);
    }
    if (args.switches.has('json')) printJson(io, { out: path.resolve(out), config: manifest.config, stages: manifest.stages.length });
    else io.stdout.write(`imported ${from} into ${out}: ${manifest.config.nLayer} layers, ${manifest.stages.length} stages\n`);
    return 0;
  },
};
