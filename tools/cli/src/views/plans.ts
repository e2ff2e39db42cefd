import type { ClassObservations, ClientObservations, ClientPlan, ListPlansResponse } from '@tandem/protocol';
import { formatTable, ms } from './table';

/** A fraction as a whole percentage. */
const pct = (x: number): string => `${Math.round(x * 100)} %`;

/** One client's plan: a header line and a table of its request classes. */
export function planTable(p: ClientPlan): string {
  const head = `client ${p.clientId}  epoch ${p.epoch}  algorithm ${p.algorithm || '?'}  planned ${p.createdUnixMs ? new Date(p.createdUnixMs).toISOString() : '?'}`;
  // A phased plan shows its prefill's placement, then its decode's.
  const placement = (c: ClientPlan['classes'][number]): string =>
    c.decodePlacement && c.decodePlacement !== c.placement ? `${c.placement} -> ${c.decodePlacement}` : c.placement;
  const rows = p.classes.map((c) => [c.name, placement(c), ms(c.slaMs), ms(c.predictedLatencyMs), ms(c.predictedServerWork), c.feasible ? 'yes' : 'NO']);
  const table = formatTable(['class', 'placement', 'SLA ms', 'predicted ms', 'server work ms', 'feasible'], rows, { indent: '  ', rightAlign: [2, 3, 4] });
  return `${head}\n${table}`;
}

/**
 * What the planner observed of one client's generations, per class: outcome counts, the
 * attainment of the plan in force, predicted against observed end-to-end latency (median and
 * mean of the recent window), the estimated error (obs/pred, decayed), and the correction and
 * safety factors it plans with. Empty when no class has an outcome yet.
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
  ]);
  const target = seen[0].attainmentTarget;
  const window = Math.max(...seen.map((c) => c.window));
  const head = `  observed (attainment of the plan in force, target ${pct(target)}; latency over the last ${window} successful generations)`;
  const table = formatTable(
    ['class', 'outcomes', 'failed', 'attainment', 'e2e p50 pred/obs ms', 'e2e mean pred/obs ms', 'obs/pred', 'correction', 'safety'],
    rows,
    { indent: '  ', rightAlign: [1, 2, 3, 4, 5, 6, 7, 8] },
  );
  return `${head}\n${table}`;
}

/** The plans as text: one block per client, with its observations when there are any. */
export function formatPlans(r: ListPlansResponse): string {
  if (r.plans.length === 0) return 'no plans yet: the planner has not heard from any client (or not yet from the server-executor)';
  return r.plans
    .map((p) => {
      const seen = observationsTable(r.observations.find((o) => o.clientId === p.clientId));
      return seen ? `${planTable(p)}\n${seen}` : planTable(p);
    })
    .join('\n\n');
}
