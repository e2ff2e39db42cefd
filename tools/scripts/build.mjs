#!/usr/bin/env node
// Compiles the services (apps/*/src/main.ts and what they import) to CommonJS with tsc, for
// the deploy image: `node dist/apps/<app>/src/main.js`. Usage: build.mjs [--out DIR] (default dist;
// DIR must lie inside the repository, whose node_modules hold the third-party packages).
//
// The workspace packages' package.json point `main` at their TypeScript sources (src/index.ts),
// which tsx, jest and tsc resolve in development. Compiled code must load the compiled
// libraries instead, so this writes DIR/node_modules/@tandem/<lib>/package.json with `main`
// pointing at DIR/libs/<lib>/src/index.js: Node looks in DIR/node_modules before the
// workspace's own node_modules, so every `@tandem/*` import of a file under DIR resolves there.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const args = process.argv.slice(2);
const outFlag = args.indexOf('--out');
if (outFlag >= 0 && !args[outFlag + 1]) {
  console.error('build: --out needs a directory');
  process.exit(2);
}
const out = resolve(outFlag >= 0 ? args[outFlag + 1] : join(root, 'dist'));
// Third-party packages resolve from the repository's node_modules, so DIR must be under it.
if (relative(root, out).startsWith('..') || out === root) {
  console.error(`build: --out must be a directory inside ${root}, given ${out}`);
  process.exit(2);
}

rmSync(out, { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const res = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json'), '--outDir', out], { stdio: 'inherit' });
if (res.status !== 0) {
  console.error(`build: tsc failed (exit ${res.status ?? res.signal})`);
  process.exit(1);
}

let linked = 0;
for (const group of ['libs', 'apps']) {
  for (const dir of readdirSync(join(root, group))) {
    const pkgFile = join(root, group, dir, 'package.json');
    const entry = join(out, group, dir, 'src', 'index.js');
    if (!existsSync(pkgFile) || !existsSync(entry)) continue; // not reached from any service
    const { name } = JSON.parse(readFileSync(pkgFile, 'utf8'));
    const shim = join(out, 'node_modules', ...name.split('/'));
    mkdirSync(shim, { recursive: true });
    writeFileSync(join(shim, 'package.json'), `${JSON.stringify({ private: true, main: relative(shim, entry) })}\n`);
    linked++;
  }
}
console.log(`build: compiled to ${relative(process.cwd(), out) || '.'}, ${linked} workspace packages resolved to their compiled code`);
