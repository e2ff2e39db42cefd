import type { ESLint } from 'eslint';

/** A project of the workspace: its folder relative to the root, its package name and its `type:` tag. */
export interface Project {
  readonly dir: string;
  readonly name: string;
  readonly tag: string;
}

/** Per project type: the project types it may import and the external modules it may not (outside its tests). */
export declare const RULES: Readonly<Record<string, { readonly allowed: readonly string[]; readonly banned: readonly string[] }>>;

/** The workspace's projects under `root`; throws naming the package.json of a project without a known `type:` tag. */
export declare function readProjects(root: string): Project[];

/** The plugin for the workspace at `root`, with the rules `module-boundaries` and `process-env`. */
export declare function boundariesPlugin(root: string): ESLint.Plugin;
