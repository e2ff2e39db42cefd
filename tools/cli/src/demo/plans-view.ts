import type { ClientPlan, ListPlansResponse } from '@tandem/protocol';
import { formatTable, ms } from './table';

/** One client's plan: a header line and a table of its request classes. */
export function planTable(p: ClientPlan): string {
  const head = `client ${p.clientId}  epoch ${p.epoch}  algorithm ${p.algorithm || '?'}  planned ${p.createdUnixMs ? new Date(p.createdUnixMs).toISOString() : '?'}`;
  const rows = p.classes.map((c) => [
    c.name, c.placement, ms(c.slaMs), ms(c.predictedLatencyMs), ms(c.predictedServerWork), c.feasible ? 'yes' : 'NO',
  ]);
  const table = formatTable(['class', 'placement', 'SLA ms', 'predicted ms', 'server work ms', 'feasible'], rows, { indent: '  ', rightAlign: [2, 3, 4] });
  return `${head}\n${table}`;
}

/** The plans as text: one block per client. */
export function formatPlans(r: ListPlansResponse): string {
  if (r.plans.length === 0) return 'no plans yet: the planner has not heard from any client (or not yet from the server-executor)';
  return r.plans.map(planTable).join('\n\n');
}

