// Prints the environment-variable tables of the three services (markdown), as the README shows them.
// `npx tsx tools/scripts/update-readme-env.ts` writes them into the README; a test checks it is current.
import { envTable } from '@tandem/service-kit';
import { agentEnv } from '@tandem/client-agent';
import { plannerEnv } from '@tandem/planner';
import { executorEnv } from '@tandem/server-executor';

export const ENV_SECTIONS = [
  { title: 'server-executor', schema: executorEnv },
  { title: 'planner', schema: plannerEnv },
  { title: 'client-agent', schema: agentEnv },
] as const;

/** The markdown of every section, each headed `#### <service>`. */
export function envDocs(): string {
  return ENV_SECTIONS.map((s) => `#### ${s.title}\n\n${envTable(s.schema)}\n`).join('\n');
}
