import { agentEnv } from '@tandem/client-agent';
import { plannerEnv } from '@tandem/planner';
import { executorEnv } from '@tandem/server-executor';
import { ConfigError, loadEnv, type EnvSchema } from '@tandem/service-kit';

/** The services, by directory under apps/. */
export type AppName = 'server-executor' | 'planner' | 'client-agent';

/** Each app's environment schema (its config.ts variables). */
const APP_ENV: Readonly<Record<AppName, EnvSchema>> = { 'server-executor': executorEnv, planner: plannerEnv, 'client-agent': agentEnv };

/** Every variable any Tandem service reads. */
const SERVICE_VARS = new Set(Object.values(APP_ENV).flatMap((s) => Object.keys(s)));

/**
 * The environment of one service process: this process's environment without any service
 * variable (so a service runs the same whatever the shell holds), then, with `fromShell`, this
 * process's values of the app's own variables (`PLANNER_IDLE_UTILISATION=0 tandem loadtest`),
 * then `vars`, which win. Checked against the app's schema first, so a mistake fails here with
 * the app's own message instead of in a child that exits.
 * @throws Error naming the app and each bad variable (the schema's problems), or a variable of another service in `vars`.
 */
export function serviceEnv(
  app: AppName,
  vars: Readonly<Record<string, string>>,
  opts: { fromShell?: boolean; shell?: NodeJS.ProcessEnv } = {},
): Record<string, string> {
  const schema = APP_ENV[app];
  for (const k of Object.keys(vars)) if (SERVICE_VARS.has(k) && !(k in schema)) throw new Error(`internal: ${k} is not a variable of the ${app}`);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(opts.shell ?? process.env)) {
    if (v !== undefined && (!SERVICE_VARS.has(k) || (opts.fromShell && k in schema))) out[k] = v;
  }
  Object.assign(out, vars);
  try {
    loadEnv(schema, out);
  } catch (err) {
    if (err instanceof ConfigError) throw new Error(`the ${app}'s environment: ${err.problems.join('; ')}`, { cause: err });
    throw err;
  }
  return out;
}
