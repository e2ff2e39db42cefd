import { status } from '@grpc/grpc-js';
import { clientOptions } from '@tandem/service-kit';
import { type Manifest, decode, encode } from '@tandem/model';
import { AgentServiceClient, type GenerateRequest, type GenerateResponse, type GenerationSummary } from '@tandem/protocol';
import { type ParsedArgs, intFlag, parseArgs, required } from '../args';
import type { Command } from '../command';
import { ServiceCallError, UsageError } from '../errors';
import { type CliIo, printJson } from '../io';
import { clientSecurityFlags, SECURITY_FLAGS, SECURITY_USAGE } from '../security-flags';
import { idsFlag, loadPipeline, placementFlag, readModelFlag, toUsageError } from '../model-flags';

/**
 * Where the tokens come from. Today only the in-process split pipeline (`--model` + `--placement`);
 * another backend (e.g. a client agent reached with `--agent ADDR`) plugs in by implementing this
 * and being chosen in {@link openBackend}.
 */
interface GenerateBackend {
  /** Greedy decoding; calls `onToken` with each id as it is chosen; resolves with all generated ids. */
  generate(prompt: readonly number[], maxNewTokens: number, onToken: (id: number) => void): Promise<number[]>;
  close(): Promise<void>;
}

/** Flags and switches `tandem generate` accepts; a new backend adds its own here. */
const FLAGS = ['model', 'agent', 'prompt', 'ids', 'max-new-tokens', 'placement', 'deadline-ms', ...SECURITY_FLAGS];
const SWITCHES = ['json'];

async function localBackend(args: ParsedArgs, dir: string, manifest: Manifest): Promise<GenerateBackend> {
  const placement = placementFlag(required(args, 'placement'), manifest);
  const pipeline = await loadPipeline(dir, placement);
  return {
    generate: (prompt, maxNewTokens, onToken) => pipeline.generate(prompt, { maxNewTokens, onToken }),
    close: () => pipeline.close(),
  };
}

function openBackend(args: ParsedArgs, dir: string, manifest: Manifest): Promise<GenerateBackend> {
  return localBackend(args, dir, manifest);
}

/** What `--agent` prints with --json beyond ids and text: how the agent ran the generation. */
type AgentSummary = Omit<GenerationSummary, 'ids' | 'text'>;

/**
 * `--agent ADDR`: the generation runs on a client-agent, split with the server as the
 * agent's plan (or `--placement`) says. The agent validates the request; an error status names
 * the agent, its code and message (ServiceCallError): INVALID_ARGUMENT is bad input (exit 2),
 * anything else a failure (exit 1).
 */
async function generateViaAgent(args: ParsedArgs, io: CliIo): Promise<number> {
  const addr = required(args, 'agent');
  if (args.flags.has('model')) throw new UsageError('--model and --agent are exclusive: the agent holds the model, given both');
  const text = args.flags.get('prompt');
  const list = args.flags.get('ids');
  if (text !== undefined && list !== undefined) throw new UsageError('--prompt and --ids are exclusive: give one of them, given both');
  let input: GenerateRequest['input'];
  if (list !== undefined) {
    const ids = (list.split(',') as string[]).map((v, i) => {
      const n = Number(v.trim());
      if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n)) throw new UsageError(`--ids[${i}] must be a non-negative integer, given '${v}'`);
      return n;
    });
    input = { $case: 'ids', value: { ids } };
  } else if (text !== undefined) input = { $case: 'prompt', value: text };
  else throw new UsageError('--prompt TEXT or --ids LIST is required');
  const maxNew = intFlag(args, 'max-new-tokens', { min: 1 });
  const deadlineMs = intFlag(args, 'deadline-ms', { min: 1, default: 300_000 });
  const json = args.switches.has('json');
  const sec = clientSecurityFlags(args);
  const client = new AgentServiceClient(addr, sec.credentials, clientOptions(sec));
  const streamer = json ? undefined : textStreamer(io);
  const so: number[] = [];
  try {
    const summary = await new Promise<GenerationSummary>((resolve, reject) => {
      let last: GenerationSummary | undefined;
      const call = client.generate(
        {
          input,
          maxNewTokens: maxNew,
          placement: args.flags.get('placement') ?? '',
        },
        { deadline: Date.now() + deadlineMs },
      );
      call.on('data', (m: GenerateResponse) => {
        if (m.kind?.$case === 'token') {
          so.push(m.kind.value.id);
          streamer?.push(so);
        } else if (m.kind?.$case === 'summary') last = m.kind.value;
      });
      call.on('error', reject);
      call.on('end', () => (last ? resolve(last) : reject(new Error(`the agent at ${addr} ended the stream without a summary`))));
    });
    if (json) {
      const { ids: out, text: outText, ...rest } = summary;
      const extra: AgentSummary = rest;
      printJson(io, { ids: out, text: outText, ...extra });
    } else streamer?.end(summary.ids);
    return 0;
  } catch (err) {
    throw ServiceCallError.of(`the agent at ${addr}`, 'Generate', err, (code) =>
      code === status.UNAVAILABLE ? ' (is the agent running, and can it reach the executor?)' : '',
    );
  } finally {
    client.close();
  }
}

/** The prompt ids from exactly one of `--prompt TEXT` (GPT-2 BPE) or `--ids LIST`. */
function promptIds(args: ParsedArgs, manifest: Manifest): number[] {
  const text = args.flags.get('prompt');
  const list = args.flags.get('ids');
  if (text !== undefined && list !== undefined) throw new UsageError('--prompt and --ids are exclusive: give one of them, given both');
  if (list !== undefined) return idsFlag('--ids', list, manifest);
  if (text === undefined) throw new UsageError('--prompt TEXT or --ids LIST is required');
  const ids = encode(text);
  if (ids.length === 0) throw new UsageError(`--prompt must encode to at least one token, given '${text}'`);
  const V = manifest.config.vocabSize;
  const bad = ids.find((id) => id >= V);
  if (bad !== undefined)
    throw new UsageError(`--prompt must encode to token ids in 0..${V - 1} (the model's vocabulary), given '${text}' (encodes to id ${bad})`);
  if (ids.length > manifest.config.nPositions)
    throw new UsageError(`--prompt must encode to at most nPositions = ${manifest.config.nPositions} tokens, given ${ids.length}`);
  return ids;
}

/** Writes the decoded text as it grows, holding back a trailing partial UTF-8 character. */
function textStreamer(io: CliIo): { push(ids: readonly number[]): void; end(ids: readonly number[]): void } {
  let written = '';
  const flush = (ids: readonly number[], final: boolean): void => {
    const text = decode(ids);
    if (!final && text.endsWith('\uFFFD')) return;
    if (text.startsWith(written)) io.stdout.write(text.slice(written.length));
    written = text;
  };
  return {
    push: (ids) => flush(ids, false),
    end: (ids) => {
      flush(ids, true);
      io.stdout.write('\n');
    },
  };
}

const USAGE = `usage: tandem generate --model DIR (--prompt TEXT | --ids LIST) --max-new-tokens N --placement PLACEMENT [--json]
       tandem generate --agent ADDR (--prompt TEXT | --ids LIST) --max-new-tokens N [--placement P] [--deadline-ms MS]
                         [--tls-ca FILE [--tls-cert FILE --tls-key FILE]] [--token TOKEN] [--json]

Greedy decoding with the KV cache (a prefill over the prompt, then one step per token), executed
with the split placement: C stages in a client-side runner, S stages in a server-side runner.

  --model DIR            model directory (manifest.json + stages/)
  --prompt TEXT          prompt text, GPT-2 BPE encoded
  --ids LIST             or the prompt as comma-separated token ids
  --max-new-tokens N     tokens to generate (prompt + N - 1 must fit in nPositions)
  --placement P          one C/S character per stage (2*nLayer+2 characters)
  --agent ADDR           run on a client-agent (host:port) instead, following its plan; --placement
                         then overrides the plan, and --json adds how it ran (placement, planEpoch,
                         ttftMs, totalMs, slaMs, serverComputeMs, ...)
  --deadline-ms MS       with --agent: deadline of the whole generation (default 300000)
  with --agent, how to reach it (the agent's TLS_CERT_FILE, AUTH_TOKENS_FILE):
${SECURITY_USAGE}
  --json                 print {"ids": [...generated ids...], "text": "..."}; otherwise the text is
                         streamed to stdout as it is generated`;

/** `tandem generate`: greedy split generation. */
export const generateCommand: Command = {
  path: ['generate'],
  summary: 'generate tokens greedily with a split placement and the KV cache',
  usage: USAGE,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const args = parseArgs(argv, { flags: FLAGS, switches: SWITCHES });
    if (args.flags.has('agent')) return generateViaAgent(args, io);
    if (args.flags.has('deadline-ms')) throw new UsageError('--deadline-ms applies to --agent only');
    const remote = SECURITY_FLAGS.find((f) => args.flags.has(f));
    if (remote) throw new UsageError(`--${remote} applies to --agent only`);
    const dir = required(args, 'model');
    const manifest = await readModelFlag(dir);
    const prompt = promptIds(args, manifest);
    const { nPositions } = manifest.config;
    const maxNew = intFlag(args, 'max-new-tokens', { min: 0, max: nPositions });
    if (maxNew > 0 && prompt.length + maxNew - 1 > nPositions) {
      throw new UsageError(`--max-new-tokens must keep prompt (${prompt.length} tokens) + N - 1 within nPositions = ${nPositions}, given ${maxNew}`);
    }
    const json = args.switches.has('json');
    const backend = await openBackend(args, dir, manifest);
    try {
      const streamer = json ? undefined : textStreamer(io);
      const so: number[] = [];
      let ids: number[];
      try {
        ids = await backend.generate(prompt, maxNew, (id) => {
          so.push(id);
          streamer?.push(so);
        });
      } catch (err) {
        throw toUsageError(err);
      }
      if (json) printJson(io, { ids, text: decode(ids) });
      else streamer?.end(ids);
      return 0;
    } finally {
      await backend.close();
    }
  },
};
