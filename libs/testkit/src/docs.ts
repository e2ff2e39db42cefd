import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

/** The repository's root folder. */
const ROOT = resolve(__dirname, '../../..');

/**
 * The JSON code block following `<!-- marker -->` in `file` (from the repository's root, as
 * docs/placement.md): the worked examples the documentation states, for the tests that check them.
 */
export function docJsonBlock(file: string, marker: string): unknown {
  const doc = readFileSync(resolve(ROOT, file), 'utf8');
  const at = doc.indexOf(`<!-- ${marker} -->`);
  if (at < 0) throw new Error(`${file} has no <!-- ${marker} -->`);
  const m = /```json\n([\s\S]*?)```/.exec(doc.slice(at));
  if (!m) throw new Error(`${file} has no JSON code block after <!-- ${marker} -->`);
  return JSON.parse(m[1]);
}
