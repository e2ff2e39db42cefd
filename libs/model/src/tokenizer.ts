import * as r50k from 'gpt-tokenizer/cjs/encoding/r50k_base';

/** The GPT-2 end-of-text token id. */
export const EOT_ID = 50256;

/** Size of the GPT-2 BPE vocabulary (ids 0..50256). */
export const GPT2_VOCAB_SIZE = 50257;

/** GPT-2 byte-level BPE (the r50k_base encoding): text to token ids. `<|endoftext|>` in text becomes 50256. */
export function encode(text: string): number[] {
  return r50k.encode(text, { allowedSpecial: new Set([r50k.EndOfText]) });
}

/**
 * GPT-2 BPE: token ids back to text. Invalid UTF-8 byte sequences decode to U+FFFD; an id outside
 * the GPT-2 vocabulary (possible with an imported model whose vocabulary is larger) is rendered as
 * `<|id:N|>` rather than failing.
 */
export function decode(ids: readonly number[]): string {
  let out = '';
  let run: number[] = [];
  for (const id of ids) {
    if (Number.isInteger(id) && id >= 0 && id < GPT2_VOCAB_SIZE) {
      run.push(id);
      continue;
    }
    if (run.length) {
      out += r50k.decode(run);
      run = [];
    }
    out += `<|id:${id}|>`;
  }
  if (run.length) out += r50k.decode(run);
  return out;
}
