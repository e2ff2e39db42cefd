import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { envDocs } from '../src/docs/env-docs';

describe('README', () => {
  const readme = readFileSync(join(__dirname, '../../../README.md'), 'utf8');

  it('documents every environment variable of every service with its current default', () => {
    // Regenerate with `npx tsx tools/scripts/update-readme-env.ts` when a variable changes.
    expect(readme).toContain(envDocs());
  });

  it('gives the quick start that CI runs', () => {
    const ci = readFileSync(join(__dirname, '../../../.ci/run'), 'utf8');
    expect(readme).toMatch(/^npm ci$/m);
    expect(readme).toMatch(/^npm start\b/m);
    expect(readme).toMatch(/^npm test\b/m);
    expect(ci).toMatch(/^npm test\b/m);
  });
});
