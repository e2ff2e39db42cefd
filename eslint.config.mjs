// ESLint for every TypeScript file of the workspace (`npm run lint`): typescript-eslint's
// type-aware promise rules, no `any`, no non-null assertions outside tests, and the module
// boundaries of tools/eslint/boundaries.cjs. docs/architecture.md, "Lint and format".
import tseslint from 'typescript-eslint';
import boundaries from './tools/eslint/boundaries.cjs';

const root = import.meta.dirname;

export default tseslint.config(
  { ignores: ['**/node_modules/**', 'libs/protocol/src/generated/**', '**/dist/**', '.bench-build-*/**', '**/coverage/**'] },
  {
    files: ['**/*.ts'],
    languageOptions: { parser: tseslint.parser, parserOptions: { projectService: true, tsconfigRootDir: root } },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    plugins: { '@typescript-eslint': tseslint.plugin, tandem: boundaries.boundariesPlugin(root) },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-non-null-assertion': 'error',
      'tandem/module-boundaries': 'error',
      'tandem/process-env': 'error',
    },
  },
  // Tests may assert what they just checked (`map.get(k)!` after expecting it).
  { files: ['**/*.spec.ts', '**/test/**', 'e2e/**'], rules: { '@typescript-eslint/no-non-null-assertion': 'off' } },
);
