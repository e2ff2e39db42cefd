import type { ClassObservations, ClientObservations, ClientPlan, ExecutorSummary, ListPlansResponse } from '@tandem/protocol';
import { formatTable, ms } from './table';

/** A fraction as a whole percentage. */
const pct = (x: number): string => `${Math.round(x * 100)} %`;

/**
 * One client's plan: a header line and a table of its request classes. A plan that names an
 * executor (the planner assigns one when several report an address) has an executor column,
 * and its header names the alternates.
 */
export function planTable(p: ClientPlan): string {
  const alternates = p.executor ? `  alternates ${p.alternates.map((a) => a.id).join(', ') || '-'}` : '';
  const head = `client ${p.clientId}  epoch ${p.epoch}  algorithm ${p.algorithm || '?'}  planned ${p.createdUnixMs ? new Date(p.createdUnixMs).toISOString() : '?'}${alternates}`;
  // A phased plan shows its prefill's placement, then its decode's.
  const placement = (c: ClientPlan['classes'][number]): string =>
    c.decodePlacement && c.decodePlacement !== c.placement ? `${c.placement} -> ${c.decodePlacement}` : c.placement;
  const executor = p.executor ? [`${p.executor.id} (${p.executor.address})`] : [];
  const rows = p.classes.map((c) => [
    c.name,
    ...executor,
    placement(c),
    ms(c.slaMs),
    ms(c.predictedLatencyMs),
    ms(c.predictedServerWork),
    c.feasible ? 'yes' : 'NO',
  ]);
  const header = ['class', ...(p.executor ? ['executor'] : []), 'placement', 'SLA ms', 'predicted ms', 'server work ms', 'feasible'];
  const table = formatTable(header, rows, { indent: '  ', rightAlign: p.executor ? [3, 4, 5] : [2, 3, 4] });
  return `${head}\n${table}`;
}

/** The executors the planner knows of, with the clients whose plans name each (ListPlansResponse.executors). */
export function executorsTable(executors: readonly ExecutorSummary[]): string {
  const rows = executors.map((e) => [
    e.id,
    e.address || '- (never assigned)',
    String(e.clients),
    pct(e.utilisation),
    e.draining ? 'yes' : 'no',
    e.lastReportUnixMs ? new Date(e.lastReportUnixMs).toISOString() : '?',
  ]);
  return `executors\n${formatTable(['executor', 'address', 'clients', 'utilisation', 'draining', 'last report'], rows, { indent: '  ', rightAlign: [2, 3] })}`;
}

/** A class's per-kind corrections (ClassObservations.kind_corrections), e.g. `split TTFT×1.00 TPOT×1.30`; '-' when none. */
function kindsText(c: ClassObservations): string {
  const parts = c.kindCorrections.map((k) => `${k.kind} TTFT×${k.ttft.toFixed(2)} TPOT×${k.tpot.toFixed(2)}`);
  return parts.length > 0 ? parts.join(', ') : '-';
}

/**
 * What the planner observed of one client's generations, per class: outcome counts, the
 * attainment of the plan in force, predicted against observed end-to-end latency (median and
 * mean of the recent window), the estimated error (obs/pred, decayed), and the correction and
 * safety factors it plans with, and the factors per kind of placement. Empty when no class has an outcome yet.
 */
export function observationsTable(o: ClientObservations | undefined): string {
  const seen = (o?.classes ?? []).filter((c) => c.outcomes > 0);
  if (seen.length === 0) return '';
  const attainment = (c: ClassObservations): string => (c.planOutcomes > 0 ? `${pct(c.attainment)} of ${c.planOutcomes}` : '-');
  const pair = (a: number, b: number, n: number): string => (n > 0 ? `${ms(a)} / ${ms(b)}` : '-');
  const rows = seen.map((c) => [
    c.name,
    String(c.outcomes),
    String(c.failures),
    attainment(c),
    pair(c.predictedE2eMedianMs, c.observedE2eMedianMs, c.window),
    pair(c.predictedE2eMeanMs, c.observedE2eMeanMs, c.window),
    c.e2eRatio.toFixed(2),
    c.e2eCorrection.toFixed(2),
    c.allServer ? 'all-server' : c.safetyFactor.toFixed(2),
    kindsText(c),
  ]);
  const target = seen[0].attainmentTarget;
  const window = Math.max(...seen.map((c) => c.window));
  const head = `  observed (attainment of the plan in force, target ${pct(target)}; latency over the last ${window} successful generations)`;
  const table = formatTable(
    ['class', 'outcomes', 'failed', 'attainment', 'e2e p50 pred/obs ms', 'e2e mean pred/obs ms', 'obs/pred', 'correction', 'safety', 'per kind'],
    rows,
    { indent: '  ', rightAlign: [1, 2, 3, 4, 5, 6, 7, 8] },
  );
  return `${head}\n${table}`;
}

/** What each role ListPlansResponse.planner_role names means, as `tandem plans` says it (docs/planner.md, "State and failover"). */
const PLANNER_ROLES: Readonly<Record<string, string>> = {
  leader: 'it plans, and writes the plans to its state bucket',
  standby: 'it serves the plans the leading planner wrote, and takes over if that one stops',
};

/** The plans as text: the planner's role when it keeps state, then one block per client, with its observations when there are any. */
export function formatPlans(r: ListPlansResponse): string {
  const role = PLANNER_ROLES[r.plannerRole ?? ''];
  const executors = r.executors.length > 0 ? `${executorsTable(r.executors)}\n\n` : '';
  const head = (role ? `planner: ${r.plannerRole} (${role})\n\n` : '') + executors;
  if (r.plans.length === 0) return `${head}no plans yet: the planner has not heard from any client (or not yet from the server-executor)`;
  return (
    head +
    r.plans
      .map((p) => {
        const seen = observationsTable(r.observations.find((o) => o.clientId === p.clientId));
        return seen ? `${planTable(p)}\n${seen}` : planTable(p);
      })
      .join('\n\n')
  );
}
