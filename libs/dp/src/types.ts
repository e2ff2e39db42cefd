/** Where one stage runs. The request starts and must end on the client. */
export type Location = 'client' | 'server';

/** One location per stage, `placement[i]` for `stages[i]`. Invariant: same length as the instance's stages. */
export type Placement = readonly Location[];

/**
 * One stage of the model chain, as priced for one request (or one whole generation).
 * Invariant (checked by {@link validateInstance}): every number is finite and >= 0.
 */
export interface Stage {
  /** Free-form label, e.g. `block.3.attn`. */
  readonly name: string;
  /** Compute time of this stage on the client, in milliseconds. */
  readonly clientMs: number;
  /** Compute time of this stage on the server, in milliseconds. */
  readonly serverMs: number;
  /** Server work charged when this stage runs on the server (the objective's unit, e.g. GPU-ms). */
  readonly serverWork: number;
  /** Bytes of this stage's input, moved over a link when the previous stage ran on the other side. */
  readonly inBytes: number;
}

/**
 * A one-way network link. Moving b bytes takes `latencyMs + b / bytesPerMs`.
 * Invariant: `latencyMs >= 0`, `bytesPerMs > 0`, both finite.
 */
export interface Link {
  readonly latencyMs: number;
  readonly bytesPerMs: number;
}

/**
 * The split-placement problem: place each stage on the client or the server so that
 * the server work is least while the end-to-end latency stays within `slaMs`.
 * Invariant (checked by {@link validateInstance}): `stages` non-empty; `outBytes >= 0`;
 * `slaMs > 0`; `resolutionMs`, when present, `> 0`.
 */
export interface PlacementInstance {
  readonly stages: readonly Stage[];
  /** Bytes of the result that go down to the client when the last stage runs on the server. */
  readonly outBytes: number;
  /** Client to server. */
  readonly uplink: Link;
  /** Server to client. */
  readonly downlink: Link;
  /** Latency bound of the request, in milliseconds. */
  readonly slaMs: number;
  /**
   * Extension (optional, default 0): server work charged each time the request enters the
   * server, i.e. for the upload of stage 0's input when stage 0 runs there and for every
   * client→server boundary. It prices the fixed cost of receiving, scheduling and answering
   * one hand-over, so that a placement that visits the server twice costs more than one that
   * visits it once for the same stages.
   */
  readonly serverEntryWork?: number;
  /** Time step of the `dp-grid` solver, in milliseconds; only `dp-grid` needs it. */
  readonly resolutionMs?: number;
}

/** The names accepted by {@link solve}, in the order they are documented. */
export const ALGORITHMS = ['dp', 'dp-grid', 'greedy', 'prefix', 'server-only', 'client-only', 'greedy-ratio'] as const;

/** One of {@link ALGORITHMS}. */
export type Algorithm = (typeof ALGORITHMS)[number];

/** Exact figures of one placement, as computed by {@link evaluatePlacement}. */
export interface PlacementCost {
  /** Σ compute time where each stage runs + Σ transfers (including the final download), in ms. */
  readonly latencyMs: number;
  /** Σ `serverWork` of the stages placed on the server, plus `serverEntryWork` per entry to the server. */
  readonly serverWork: number;
  /**
   * Number of transfers: every boundary crossed, counting the upload of stage 0's input
   * when stage 0 runs on the server and the final download when the last stage does
   * (all-server has 2, all-client 0). Always even.
   */
  readonly switches: number;
}

/**
 * The answer of one solver (the `tandem plan` answer object).
 * Invariants: `placement.length === instance.stages.length`; `latencyMs`, `serverWork` and
 * `switches` are exactly {@link evaluatePlacement} of `placement` (never rounded);
 * `feasible` is whether `latencyMs <= slaMs` (within 1e-9 relative).
 */
export interface PlacementResult extends PlacementCost {
  readonly algorithm: Algorithm;
  readonly feasible: boolean;
  readonly placement: Location[];
}
