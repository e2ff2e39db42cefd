// ESLint for every TypeScript file of the workspace (`npm run lint`): typescript-eslint's
// type-aware promise rules, no `any`, no non-null assertions outside tests.
import tseslint from 'typescript-eslint';

const root = import.meta.dirname;

export default tseslint.config(
  { ignores: ['**/node_modules/**', 'libs/protocol/src/generated/**', '**/dist/**', '**/coverage/**'] },
  {
    files: ['**/*.ts'],
    languageOptions: { parser: tseslint.parser, parserOptions: { projectService: true, tsconfigRootDir: root } },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    plugins: { '@typescript-eslint': tseslint.plugin },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-non-null-assertion': 'error',
    },
  },
  // Tests may assert what they just checked (`map.get(k)!` after expecting it).
  { files: ['**/*.spec.ts', '**/test/**', 'e2e/**'], rules: { '@typescript-eslint/no-non-null-assertion': 'off' } },
);
