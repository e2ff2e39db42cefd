import * as path from 'node:path';

/** The repository root (this file is tools/cli/src/demo/paths.ts). */
export const REPO_ROOT = path.resolve(__dirname, '../../../..');

/** The services the demo launches, by directory under apps/. */
export type AppName = 'server-executor' | 'planner' | 'client-agent';

/** The entry point of an app, run with `node --require tsx/cjs`. */
export function appMain(app: AppName): string {
  return path.join(REPO_ROOT, 'apps', app, 'src', 'main.ts');
}
