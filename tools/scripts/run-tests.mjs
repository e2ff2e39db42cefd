#!/usr/bin/env node
// Runs every jest test in the workspace in one jest process and ends with the plain line
// `tests: N passed, N failed` (CI reads that line). Extra arguments go to jest, e.g.
// `npm test -- libs/dp` to run one project's tests.
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const dir = mkdtempSync(join(tmpdir(), 'tandem-jest-'));
const out = join(dir, 'results.json');
const args = ['jest', '--config', 'jest.config.js', '--json', `--outputFile=${out}`, ...process.argv.slice(2)];
const res = spawnSync('npx', ['--no-install', ...args], { stdio: 'inherit', env: { ...process.env, FORCE_COLOR: process.env.FORCE_COLOR ?? '0' } });
let passed = 0;
let failed = 0;
try {
  const r = JSON.parse(readFileSync(out, 'utf8'));
  passed = r.numPassedTests;
  failed = r.numFailedTests + (r.numRuntimeErrorTestSuites ?? 0);
} catch (err) {
  console.error(`could not read jest results: ${err.message}`);
  failed = Math.max(failed, 1);
}
rmSync(dir, { recursive: true, force: true });
console.log(`tests: ${passed} passed, ${failed} failed`);
process.exit(res.status === 0 && failed === 0 ? 0 : 1);
