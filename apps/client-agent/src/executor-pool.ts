import { connectivityState, status } from '@grpc/grpc-js';
import type { ExecutorServiceClient } from '@tandem/protocol';
import { StatusError } from '@tandem/service-kit';

/** Most executor clients (gRPC channels) the agent keeps open at once, the configured one included. */
export const MAX_EXECUTOR_CLIENTS = 16;

/** A client no plan has named for this long and no generation uses is closed, ms. */
export const EXECUTOR_IDLE_MS = 60_000;

/**
 * How long an open waits for a connection to an executor before the next one is tried, when
 * there is a next one, ms. An executor that refuses connections fails at once; this bounds
 * one that never answers (packets dropped), which gRPC's own connection attempt would wait
 * on for about 20 s.
 */
export const CONNECT_TIMEOUT_MS = 3000;

/**
 * Resolves once `client`'s channel is connected, or has failed to connect (a call then fails at
 * once, as it does not wait for ready, with gRPC's reason); rejects with UNAVAILABLE when
 * neither happens within `ms` (a connection attempt still under way).
 */
export function settled(client: ExecutorServiceClient, ms: number): Promise<void> {
  const channel = client.getChannel();
  const deadline = Date.now() + ms;
  return new Promise<void>((resolve, reject) => {
    const check = (): void => {
      const state = channel.getConnectivityState(true);
      if (state === connectivityState.READY || state === connectivityState.TRANSIENT_FAILURE || state === connectivityState.SHUTDOWN) resolve();
      else
        channel.watchConnectivityState(state, deadline, (err) => {
          if (err) reject(new StatusError(status.UNAVAILABLE, `no connection to the executor at ${channel.getTarget()} within ${ms} ms`));
          else check();
        });
    };
    check();
  });
}

/** One executor's client, held by a generation (or a ping) until released. */
export interface ExecutorLease {
  readonly address: string;
  readonly client: ExecutorServiceClient;
  /** Gives the client back; idempotent. */
  release(): void;
}

interface Entry {
  readonly client: ExecutorServiceClient;
  /** Leases not yet released. */
  users: number;
  /** When a plan last named it (or it was last used), ms of `now()`. */
  lastWanted: number;
}

/**
 * The agent's gRPC clients to executors, one per address: the configured one (EXECUTOR_ADDR),
 * always open, and those plans name (ClientPlan.executor and alternates), each created on first
 * use with the same credentials and channel options (`make`), and closed once the plan followed
 * no longer names it, no lease holds it and `idleMs` went by since either. At most `maxClients` are open: past that an
 * unused one is closed to make room, and when every one is in use the address is not opened
 * (acquire gives undefined), so a planner cannot make the agent open channels without bound.
 */
export class ExecutorPool {
  private readonly entries = new Map<string, Entry>();
  private readonly maxClients: number;
  private readonly idleMs: number;
  private readonly now: () => number;
  private closed = false;
  /** The addresses the plan followed now names: their clients are kept however long unused. */
  private current = new Set<string>();

  constructor(
    private readonly opts: {
      /** EXECUTOR_ADDR: never closed before close(). */
      configured: string;
      make: (address: string) => ExecutorServiceClient;
      maxClients?: number;
      idleMs?: number;
      now?: () => number;
    },
  ) {
    this.maxClients = Math.max(1, opts.maxClients ?? MAX_EXECUTOR_CLIENTS);
    this.idleMs = opts.idleMs ?? EXECUTOR_IDLE_MS;
    this.now = opts.now ?? (() => performance.now());
    this.entries.set(opts.configured, { client: opts.make(opts.configured), users: 0, lastWanted: Infinity });
  }

  /** Addresses with a client open now. */
  addresses(): string[] {
    return [...this.entries.keys()];
  }

  /**
   * Records the addresses the plan just taken names: their clients are kept while it is
   * followed (none is opened here); those the previous plan named are kept `idleMs` more.
   */
  named(addresses: readonly string[]): void {
    const t = this.now();
    for (const a of this.current) {
      const e = this.entries.get(a);
      if (e && e.lastWanted !== Infinity) e.lastWanted = t;
    }
    this.current = new Set(addresses);
    this.sweep();
  }

  /**
   * The client of `address` for one use, created when there is none (closing an unused one
   * when the pool is full); undefined when the pool is full of clients in use, or closed.
   */
  acquire(address: string): ExecutorLease | undefined {
    if (this.closed) return undefined;
    let e = this.entries.get(address);
    if (!e) {
      this.sweep();
      if (this.entries.size >= this.maxClients && !this.evictOne()) return undefined;
      e = { client: this.opts.make(address), users: 0, lastWanted: this.now() };
      this.entries.set(address, e);
    }
    const entry = e;
    entry.users++;
    if (entry.lastWanted !== Infinity) entry.lastWanted = this.now();
    let released = false;
    return {
      address,
      client: entry.client,
      release: () => {
        if (released) return;
        released = true;
        entry.users--;
        if (entry.lastWanted !== Infinity) entry.lastWanted = this.now();
      },
    };
  }

  /** Closes every client that is unused, not named by the plan followed and not wanted for `idleMs`. */
  sweep(): void {
    const t = this.now();
    for (const [address, e] of this.entries) {
      if (e.users === 0 && !this.current.has(address) && t - e.lastWanted >= this.idleMs) {
        e.client.close();
        this.entries.delete(address);
      }
    }
  }

  /** Closes the unused client wanted least recently (never the configured one); false when every one is in use. */
  private evictOne(): boolean {
    let victim: [string, Entry] | undefined;
    for (const kv of this.entries)
      if (kv[1].users === 0 && kv[1].lastWanted !== Infinity && !this.current.has(kv[0]) && (!victim || kv[1].lastWanted < victim[1].lastWanted)) victim = kv;
    if (!victim) return false;
    victim[1].client.close();
    this.entries.delete(victim[0]);
    return true;
  }

  /** Closes every client (generations still running on one fail with CANCELLED or UNAVAILABLE). */
  close(): void {
    this.closed = true;
    for (const e of this.entries.values()) e.client.close();
    this.entries.clear();
  }
}
