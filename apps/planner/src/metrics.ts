import { counter, Counter, Histogram, latencyHistogram, readCounterBy, readGauge, readGaugeBy, type Registry } from '@tandem/service-kit';
import type { ValidOutcome } from './outcomes';

/** What the planner's gauges and mirrored counters read when scraped: its own state and counters, never a copy. */
export interface PlannerMetricSources {
  clients(): number;
  /** Telemetry messages dropped so far, by reason (`Type.field:rule`, indices left out: a bounded set). */
  dropped(): Readonly<Record<string, number>>;
  /** Telemetry messages taken so far, by message type. */
  accepted(): Readonly<Record<'ClientProfile' | 'ServerLoad' | 'GenerationOutcome', number>>;
  /** SLO attainment of the plans in force per request class (Calibrator.attainmentByClass). */
  attainment(): ReadonlyMap<string, { attainment: number }>;
  /** PLANNER_SLO_TARGET. */
  readonly attainmentTarget: number;
  /** (client, request class) pairs shed to their least-work plans now (shedding.ts). */
  shedNow(): number;
  /** Pairs shed and given back so far. */
  shedChanges(): Readonly<Record<'shed' | 'restored', number>>;
  /** Plans naming each executor now, by executor id (empty while plans name none). */
  executorClients(): ReadonlyMap<string, number>;
}

const TERMS = ['e2e', 'ttft', 'tpot'] as const;

/**
 * The planner's Prometheus metrics (`tandem_planner_*`), registered in `registry`. Labels are
 * bounded: request classes (the planner's configured ones: validateOutcome admits no other),
 * the algorithm and objective, telemetry drop reasons, executor ids (at most MAX_EXECUTORS
 * are kept at once); never a client id.
 */
export class PlannerMetrics {
  private readonly changes: Counter<'algorithm' | 'objective'>;
  private readonly replanSeconds: Histogram;
  private readonly outcomes: Counter<'request_class' | 'result'>;
  private readonly predicted: Histogram<'request_class' | 'term'>;
  private readonly observed: Histogram<'request_class' | 'term'>;

  constructor(registry: Registry, read: PlannerMetricSources, classes: readonly string[]) {
    this.changes = counter(
      registry,
      'tandem_planner_plan_changes_total',
      "Plans changed (some class's placement moved, or a client's first plan), by algorithm and the objective in force",
      ['algorithm', 'objective'],
    );
    this.replanSeconds = latencyHistogram(
      registry,
      'tandem_planner_replan_duration_seconds',
      'Re-plan rounds (a pass over the clients whose inputs changed), from start to end, slices and yields included',
    );
    this.outcomes = counter(
      registry,
      'tandem_planner_outcomes_total',
      'Generation outcomes taken from known clients, by request class and result: met (every stated SLO), missed, failed (the generation failed)',
      ['request_class', 'result'],
    );
    this.predicted = latencyHistogram(
      registry,
      'tandem_planner_predicted_latency_seconds',
      "The plan's predicted latency of successful generations, by request class and term (e2e, ttft, tpot)",
      ['request_class', 'term'],
    );
    this.observed = latencyHistogram(
      registry,
      'tandem_planner_observed_latency_seconds',
      'The measured latency of successful generations, by request class and term (e2e, ttft, tpot)',
      ['request_class', 'term'],
    );
    for (const c of classes) for (const result of ['met', 'missed', 'failed']) this.outcomes.inc({ request_class: c, result }, 0);
    readGauge(registry, 'tandem_planner_clients', 'Clients the planner knows (heard from within PLANNER_CLIENT_TTL_MS)', () => read.clients());
    readCounterBy(registry, 'tandem_planner_telemetry_dropped_total', 'Telemetry messages dropped, by reason (Type.field:rule, or Type:decode)', 'reason', () =>
      Object.entries(read.dropped()),
    );
    readCounterBy(registry, 'tandem_planner_telemetry_accepted_total', 'Telemetry messages taken, by type (outcomes: of known clients)', 'type', () =>
      Object.entries(read.accepted()),
    );
    readGaugeBy(
      registry,
      'tandem_planner_slo_attainment_ratio',
      "SLO attainment of the plans in force, by request class: each client's decayed fraction of outcomes that met every stated SLO, weighted by its outcomes",
      'request_class',
      () => [...read.attainment()].map(([c, a]) => [c, a.attainment] as const),
    );
    readGaugeBy(
      registry,
      'tandem_planner_executor_clients',
      'Clients whose plan names this executor (ClientPlan.executor), by executor id; none while plans name no executor (one executor, or none advertising an address)',
      'executor',
      () => read.executorClients(),
    );
    readGauge(
      registry,
      'tandem_planner_shed_classes',
      '(client, request class) pairs the overload shedder has moved to their least-server-work plans now (PLANNER_SHED)',
      () => read.shedNow(),
    );
    readCounterBy(registry, 'tandem_planner_shed_changes_total', 'Pairs the overload shedder shed (change=shed) or gave back (change=restored)', 'change', () =>
      Object.entries(read.shedChanges()),
    );
    readGauge(
      registry,
      'tandem_planner_slo_attainment_target_ratio',
      'The SLO attainment the planner aims at (PLANNER_SLO_TARGET)',
      () => read.attainmentTarget,
    );
  }

  /** A client's plan changed. */
  planChanged(algorithm: string, objective: string): void {
    this.changes.inc({ algorithm, objective });
  }

  /** A re-plan round ended after `ms`. */
  replanRound(ms: number): void {
    this.replanSeconds.observe(Math.max(0, ms) / 1000);
  }

  /** An outcome of a known client was taken. */
  outcome(o: ValidOutcome): void {
    this.outcomes.inc({ request_class: o.requestClass, result: !o.ok ? 'failed' : o.good ? 'met' : 'missed' });
    if (!o.ok) return;
    for (const term of TERMS) {
      const labels = { request_class: o.requestClass, term };
      if (o.predicted[term] > 0) this.predicted.observe(labels, o.predicted[term] / 1000);
      if (o.measured[term] > 0) this.observed.observe(labels, o.measured[term] / 1000);
    }
  }
}
