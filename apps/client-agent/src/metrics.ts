import { counter, Counter, Histogram, latencyHistogram, readCounter, type Registry } from '@tandem/service-kit';

/** A placement's kind, the label of the agent's metrics: every stage on the server, every stage on the device, or split. */
export type PlacementKind = 'all-server' | 'split' | 'all-device';

/** The kind of a placement (one letter per stage, C or S). */
export function placementKind(placement: string): PlacementKind {
  if (/^S*$/.test(placement)) return 'all-server';
  if (/^C+$/.test(placement)) return 'all-device';
  return 'split';
}

const KINDS: readonly PlacementKind[] = ['all-server', 'split', 'all-device'];

/** What the agent's mirrored counters read when scraped. */
export interface AgentMetricSources {
  /** Generations that resumed on a new executor session. */
  resumed(): number;
}

/** The agent's Prometheus metrics (`tandem_agent_*`), registered in `registry`; labelled by placement kind, never by placement or client. */
export class AgentMetrics {
  private readonly generations: Counter<'placement' | 'status'>;
  private readonly byExecutor: Counter<'executor' | 'status'>;
  private readonly e2eSeconds: Histogram<'placement'>;
  private readonly ttftSeconds: Histogram<'placement'>;
  private readonly planUpdates: Counter;
  private readonly handoverBytes: Counter<'direction'>;
  private readonly handoverSeconds: Histogram;

  constructor(registry: Registry, read: AgentMetricSources) {
    this.generations = counter(
      registry,
      'tandem_agent_generations_total',
      "Generations run, by placement kind (all-server, split, all-device) and status: ok, failed, or cancelled (the caller cancelled or the agent stopped); requests refused as invalid aren't counted",
      ['placement', 'status'],
    );
    this.byExecutor = counter(
      registry,
      'tandem_agent_generations_by_executor_total',
      "Generations run, by the executor of their last session (its id as the plan named it; 'configured' for EXECUTOR_ADDR when no plan named it; 'none' when no session was opened: all-device, or every open refused) and status: ok, failed or cancelled",
      ['executor', 'status'],
    );
    this.e2eSeconds = latencyHistogram(
      registry,
      'tandem_agent_generation_duration_seconds',
      'End-to-end latency of successful generations (request to last token), by placement kind',
      ['placement'],
    );
    this.ttftSeconds = latencyHistogram(
      registry,
      'tandem_agent_time_to_first_token_seconds',
      'Time to first token of successful generations, by placement kind',
      ['placement'],
    );
    this.planUpdates = counter(registry, 'tandem_agent_plan_updates_total', 'Plans taken from the planner');
    this.handoverBytes = counter(
      registry,
      'tandem_agent_kv_handover_bytes_total',
      "Key and value bytes moved between a phased plan's prefill and decode by successful generations, by direction: up (kv_put, to the executor) or down (kv_take)",
      ['direction'],
    );
    for (const direction of ['up', 'down']) this.handoverBytes.inc({ direction }, 0);
    this.handoverSeconds = latencyHistogram(
      registry,
      'tandem_agent_kv_handover_seconds',
      'Time successful phased generations spent moving stage states between the prefill and the decode (emulated link delays included)',
    );
    for (const placement of KINDS) for (const status of ['ok', 'failed', 'cancelled']) this.generations.inc({ placement, status }, 0);
    readCounter(registry, 'tandem_agent_generations_resumed_total', 'Generations that lost their executor session and resumed on a new one', () =>
      read.resumed(),
    );
  }

  /** A generation ended; `latency` for a successful one, ms; `executor` the label of its last session's executor (see the help). */
  generation(placement: string, status: 'ok' | 'failed' | 'cancelled', latency?: { e2eMs: number; ttftMs: number }, executor = 'none'): void {
    const kind = placementKind(placement);
    this.generations.inc({ placement: kind, status });
    this.byExecutor.inc({ executor, status });
    if (!latency) return;
    this.e2eSeconds.observe({ placement: kind }, latency.e2eMs / 1000);
    this.ttftSeconds.observe({ placement: kind }, latency.ttftMs / 1000);
  }

  /** A successful phased generation moved stage states between its phases (nothing is counted when nothing moved). */
  handover(h: { handoverMs: number; kvUpBytes: number; kvDownBytes: number }): void {
    if (h.handoverMs <= 0) return;
    this.handoverBytes.inc({ direction: 'up' }, h.kvUpBytes);
    this.handoverBytes.inc({ direction: 'down' }, h.kvDownBytes);
    this.handoverSeconds.observe(h.handoverMs / 1000);
  }

  /** A plan arrived from the planner. */
  planUpdated(): void {
    this.planUpdates.inc();
  }
}
