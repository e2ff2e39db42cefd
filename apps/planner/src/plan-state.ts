import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { jetstream, JetStreamApiCodes, JetStreamApiError, StorageType } from '@nats-io/jetstream';
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import { ClientPlan, ID_PATTERN } from '@tandem/protocol';
import {
  ConfigError,
  counter,
  type Counter,
  DEFAULT_PLANNER_STATE_BUCKET,
  readGauge,
  type Logger,
  type NatsConnection,
  type Registry,
} from '@tandem/service-kit';

/** PLANNER_STATE_BUCKET's default: the JetStream key-value bucket holding the plans (the NATS permissions `natsServerConfig` writes grant it). */
export const DEFAULT_STATE_BUCKET = DEFAULT_PLANNER_STATE_BUCKET;
/** PLANNER_LEADER_LEASE_MS's default. */
export const DEFAULT_LEASE_MS = 3000;
/** Key of the leader lease, in the bucket `<bucket>-leader`. */
export const LEADER_KEY = 'leader';

/** A leader stands by on its own when no renewal went through for this fraction of a lease. */
const FENCE = 7 / 8;
/** Key of the planner's epoch counter (decimal text) in the plans bucket. */
export const EPOCH_KEY = 'epoch';
/** Prefix of a client's plan key: `plans.<client id>` (the ids have no dot, see ID_PATTERN). */
export const PLAN_KEY_PREFIX = 'plans.';
/** Retry interval of plan writes that failed (NATS away), ms. */
export const WRITE_RETRY_MS = 1000;
/** Longest the initial load of the bucket waits for its entries, ms. */
const LOAD_TIMEOUT_MS = 10_000;
/** A repeated warning (NATS away) is logged at most once per this many ms. */
const WARN_EVERY_MS = 10_000;

/** PLANNER_STATE_BUCKET's value that turns the state off. */
export const STATE_OFF = 'off';

/** The key of a client's plan. */
export function planKeyOf(clientId: string): string {
  return `${PLAN_KEY_PREFIX}${clientId}`;
}

/** Why a bucket entry was refused: the rule (`ClientPlan:decode`, `ClientPlan.clientId:key`, ...) and the message naming it. */
export class StateEntryError extends Error {
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(message);
    this.name = 'StateEntryError';
  }
}

/**
 * A plan read from the bucket under `key`, checked: it decodes as a ClientPlan, names the
 * client of its key, has an epoch > 0 and exactly the planner's request classes in order.
 * @throws StateEntryError naming the key, the field and the rule.
 */
export function decodeStoredPlan(key: string, value: Uint8Array, classes: readonly string[]): ClientPlan {
  const id = key.slice(PLAN_KEY_PREFIX.length);
  let plan: ClientPlan;
  try {
    plan = ClientPlan.decode(value);
  } catch (err) {
    throw new StateEntryError(
      `key '${key}': the value does not decode as a ClientPlan (${err instanceof Error ? err.message : String(err)})`,
      'ClientPlan:decode',
    );
  }
  if (plan.clientId !== id)
    throw new StateEntryError(
      `key '${key}': ClientPlan.clientId must be the key's client '${id}', given '${plan.clientId.slice(0, 64)}'`,
      'ClientPlan.clientId:key',
    );
  if (!Number.isSafeInteger(plan.epoch) || plan.epoch <= 0)
    throw new StateEntryError(`key '${key}': ClientPlan.epoch must be an integer > 0, given ${plan.epoch}`, 'ClientPlan.epoch:range');
  const names = plan.classes.map((c) => c.name);
  if (names.length !== classes.length || names.some((n, i) => n !== classes[i]))
    throw new StateEntryError(
      `key '${key}': ClientPlan.classes must name this planner's request classes [${classes.join(', ')}] in order, given [${names.slice(0, 16).join(', ')}]`,
      'ClientPlan.classes:classes',
    );
  return plan;
}

/** The epoch counter read from the bucket. @throws StateEntryError when it is not a decimal integer > 0. */
export function decodeStoredEpoch(value: Uint8Array): number {
  const text = Buffer.from(value).toString('utf8');
  const n = /^[1-9][0-9]{0,15}$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n))
    throw new StateEntryError(`key '${EPOCH_KEY}': the epoch counter must be a decimal integer > 0, given '${text.slice(0, 32)}'`, 'epoch:format');
  return n;
}

export type PlannerRole = 'leader' | 'standby';

/** What the planner does with the bucket's contents and the election's outcome. */
export interface PlanStateListener {
  /** A client's plan in the bucket, new or changed (`undefined`: deleted). Called for the initial contents too. */
  stored(clientId: string, plan: ClientPlan | undefined): void;
  /** The epoch counter in the bucket. */
  storedEpoch(epoch: number): void;
  /** This planner became the leader (plan and write) or a standby (serve what the bucket holds). */
  role(role: PlannerRole): void;
}

export interface PlanStateOptions {
  /** The plans bucket; the lease lives in `<bucket>-leader`. */
  readonly bucket: string;
  /** How long a leader's lease lasts without renewal, ms (the lease bucket's max age). */
  readonly leaseMs: number;
  /** The planner's request class names, in order (a stored plan must name the same). */
  readonly classes: readonly string[];
  readonly log: Logger;
  /** The Prometheus registry the state's metrics go to. */
  readonly registry: Registry;
  /** This planner's id in the lease (default: host, pid and a random suffix). */
  readonly id?: string;
  /** A monotonic clock, ms (default performance.now: the lease is measured on it, so a wall clock stepped by NTP cannot cut it short or stretch it). */
  readonly now?: () => number;
}

/** The error code of a JetStream API error, or undefined. */
function jsCode(err: unknown): number | undefined {
  return err instanceof JetStreamApiError ? err.code : undefined;
}

function wrongSequence(err: unknown): boolean {
  const c = jsCode(err);
  return c === JetStreamApiCodes.StreamWrongLastSequence || c === JetStreamApiCodes.StreamWrongLastSequenceUnknown;
}

function errText(err: unknown): string {
  const m = err instanceof Error ? err.message : String(err);
  return m.length > 300 ? `${m.slice(0, 297)}...` : m;
}

/**
 * The planner's state in NATS JetStream key-value, and its leader election.
 *
 * Bucket `<bucket>` (history 1, file storage): `plans.<client id>` → the client's current
 * ClientPlan (protobuf), `epoch` → the last epoch handed out (decimal). Every planner watches
 * it; the leader writes each changed plan (a queue per key that keeps only the newest value
 * and retries what NATS did not take), the others serve what it holds.
 *
 * Bucket `<bucket>-leader` (max age = the lease): `leader` → the leader's id. A planner takes
 * the lead by creating the key when it is absent (never written, expired, or deleted by a
 * leader that stopped), or by replacing, at its revision, a value whose revision has not
 * changed for a whole lease (its leader stopped renewing). The leader renews it every
 * lease / 4 at its revision; it steps down when a renewal finds another revision, and on its
 * own, on a timer of its own, when no renewal went through for 7/8 of a lease (so it stops
 * before a standby can take over, whatever the phase of either one's steps).
 */
export class PlanState {
  readonly id: string;
  private kv: KV | undefined;
  private lease: KV | undefined;
  private current: PlannerRole = 'standby';
  private leaseRev = 0;
  /** When the last successful renewal (or the taking) was sent, local ms. */
  private renewedAt = 0;
  /** The lease's value and revision a standby saw last, and since when. */
  private seen: { rev: number; id: string; sinceMs: number } | undefined;
  private tickTimer: NodeJS.Timeout | undefined;
  /** Stands the leader by FENCE of a lease after its last renewal was sent (re-armed at each renewal). */
  private fenceTimer: NodeJS.Timeout | undefined;
  private ticking = false;
  private stopped = false;
  private watchStop: (() => void) | undefined;
  private lastRevision = 0;
  private readonly pending = new Map<string, Uint8Array | null>();
  private flushing = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private writeFailing = false;
  private lastWarn = new Map<string, number>();
  private readonly now: () => number;
  private readonly log: Logger;
  /** Counters, for status and tests. */
  readonly counters = { writes: 0, writeFailures: 0, refused: {} as Record<string, number>, leaderChanges: 0 };
  private readonly writeFailuresMetric: Counter;
  private readonly refusedMetric: Counter<'reason'>;

  constructor(
    private readonly opts: PlanStateOptions,
    private readonly listener: PlanStateListener,
  ) {
    this.id = opts.id ?? `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
    this.now = opts.now ?? (() => performance.now());
    this.log = opts.log.child({ component: 'plan-state', bucket: opts.bucket });
    readGauge(
      opts.registry,
      'tandem_planner_leader',
      'Whether this planner leads (1: it plans and writes the plans bucket) or stands by (0: it serves the plans the bucket holds)',
      () => (this.current === 'leader' ? 1 : 0),
    );
    this.writeFailuresMetric = counter(
      opts.registry,
      'tandem_planner_state_write_failures_total',
      'Writes of a plan or the epoch counter to the plans bucket that NATS did not take (retried every second while this planner leads)',
    );
    this.refusedMetric = counter(
      opts.registry,
      'tandem_planner_state_refused_total',
      'Entries of the plans bucket refused (not a plan this planner could have written), by reason',
      ['reason'],
    );
  }

  get role(): PlannerRole {
    return this.current;
  }

  /**
   * Opens (creating when absent) both buckets, reads every plan and the epoch counter (given
   * to the listener), keeps watching the plans bucket, and starts the election. Resolves
   * false, with a warning, when the NATS server has no JetStream: the planner then keeps its
   * plans in memory and always plans, as without a bucket (this object does nothing more).
   */
  async open(nc: NatsConnection): Promise<boolean> {
    const js = jetstream(nc, { timeout: Math.max(500, Math.floor(this.opts.leaseMs / 2)) });
    const kvm = new Kvm(js);
    try {
      this.kv = await kvm.create(this.opts.bucket, {
        history: 1,
        storage: StorageType.File,
        description: 'Tandem planner: each client plan and the epoch counter',
      });
      this.lease = await this.openLease(kvm);
    } catch (err) {
      const text = errText(err);
      if (/permissions? violation/i.test(text))
        throw new ConfigError([
          `PLANNER_STATE_BUCKET='${this.opts.bucket}': the planner's NATS user may not use JetStream on this bucket (${text}); grant what \`tandem nats-config\` grants it (docs/security.md (NATS)), or set PLANNER_STATE_BUCKET=off`,
        ]);
      // nats.js: JetStreamNotEnabled ("jetstream is not enabled", no responders on $JS.API.INFO).
      if (!(err instanceof Error && err.name === 'JetStreamNotEnabled') && !/jetstream (is )?not enabled|no responders/i.test(text)) throw err;
      this.kv = undefined;
      this.current = 'leader';
      this.log.warn(
        { err: text },
        `PLANNER_STATE_BUCKET='${this.opts.bucket}' needs JetStream on the NATS server (nats-server -js -sd DIR, or 'jetstream { store_dir: DIR }' in its configuration): running without state (plans in memory only, a restart starts new epochs, and this planner plans even if another one does); PLANNER_STATE_BUCKET=off says so without this warning`,
      );
      return false;
    }
    await this.load();
    this.tickTimer = setInterval(() => void this.tick(), Math.max(50, Math.floor(this.opts.leaseMs / 4)));
    this.tickTimer.unref();
    await this.tick();
    return true;
  }

  /** The lease bucket, with the lease as its max age (an existing bucket of another age is used as it is, with a warning). */
  private async openLease(kvm: Kvm): Promise<KV> {
    const name = `${this.opts.bucket}-leader`;
    try {
      return await kvm.create(name, { history: 1, ttl: this.opts.leaseMs, storage: StorageType.Memory, description: 'Tandem planner: the leader lease' });
    } catch (err) {
      const kv = await kvm.open(name).catch(() => {
        throw err;
      });
      const st = await kv.status();
      this.log.warn(
        { leaseBucket: name, ttlMs: st.ttl, leaseMs: this.opts.leaseMs, err: errText(err) },
        'the lease bucket exists with another max age (PLANNER_LEADER_LEASE_MS differs between planners?): using it; a dead leader expires after its max age',
      );
      return kv;
    }
  }

  /** Reads the bucket's entries (the watch's initial values), then keeps following it. */
  private async load(): Promise<void> {
    const kv = this.kv;
    if (!kv) return;
    const count = (await kv.status()).values;
    let loaded!: () => void;
    const initial = new Promise<void>((resolve) => (loaded = resolve));
    if (count === 0) loaded();
    this.follow(kv, () => loaded());
    const timer = setTimeout(() => {
      this.log.warn({ expected: count }, 'the plans bucket did not deliver all its entries in time; carrying on with what came');
      loaded();
    }, LOAD_TIMEOUT_MS);
    await initial;
    clearTimeout(timer);
  }

  /** Watches the bucket from `lastRevision` on; a watch that ends (NATS away) is opened again after a second. */
  private follow(kv: KV, initialised: () => void): void {
    void (async () => {
      while (!this.stopped) {
        try {
          const w = await kv.watch(this.lastRevision > 0 ? { resumeFromRevision: this.lastRevision + 1 } : {});
          this.watchStop = () => w.stop();
          if (this.stopped) w.stop();
          for await (const e of w) {
            this.lastRevision = Math.max(this.lastRevision, e.revision);
            this.entry(e);
            if (e.isUpdate) initialised();
          }
        } catch (err) {
          this.warnEvery('watch', { err: errText(err) }, 'watching the plans bucket failed; watching again');
        }
        if (!this.stopped) await new Promise((r) => setTimeout(r, 1000));
      }
    })();
  }

  /** One bucket entry: a plan, a deleted plan, or the epoch; anything else is refused with a warning. */
  private entry(e: KvEntry): void {
    try {
      if (e.key === EPOCH_KEY) {
        if (e.operation === 'PUT') this.listener.storedEpoch(decodeStoredEpoch(e.value));
        return;
      }
      const id = e.key.startsWith(PLAN_KEY_PREFIX) ? e.key.slice(PLAN_KEY_PREFIX.length) : '';
      if (!ID_PATTERN.test(id))
        throw new StateEntryError(
          `key '${e.key.slice(0, 80)}' is not one the planner writes ('${EPOCH_KEY}' or '${PLAN_KEY_PREFIX}<client id>')`,
          'key:unknown',
        );
      this.listener.stored(id, e.operation === 'PUT' ? decodeStoredPlan(e.key, e.value, this.opts.classes) : undefined);
    } catch (err) {
      const reason = err instanceof StateEntryError ? err.reason : 'entry:apply';
      this.counters.refused[reason] = (this.counters.refused[reason] ?? 0) + 1;
      this.refusedMetric.inc({ reason });
      this.log.warn({ key: e.key.slice(0, 80), revision: e.revision, reason, err: errText(err) }, 'refused an entry of the plans bucket; it is ignored');
    }
  }

  /** Queues a client's plan for writing (leader only; the newest value of a key wins). */
  writePlan(plan: ClientPlan): void {
    this.queue(planKeyOf(plan.clientId), ClientPlan.encode(plan).finish());
  }

  /** Queues the epoch counter for writing (leader only). */
  writeEpoch(epoch: number): void {
    this.queue(EPOCH_KEY, Buffer.from(String(epoch), 'utf8'));
  }

  /** Queues a forgotten client's plan for deletion (leader only). */
  deletePlan(clientId: string): void {
    this.queue(planKeyOf(clientId), null);
  }

  /** Writes not yet taken by NATS. */
  get pendingWrites(): number {
    return this.pending.size;
  }

  private queue(key: string, value: Uint8Array | null): void {
    if (this.current !== 'leader' || this.stopped || !this.kv) return;
    this.pending.delete(key); // re-insert: the newest change goes last
    this.pending.set(key, value);
    void this.flush();
  }

  /** Writes the queued keys one by one; on a failure the rest wait for the retry timer. */
  private async flush(): Promise<void> {
    if (this.flushing || this.retryTimer || !this.kv) return;
    this.flushing = true;
    try {
      while (this.current === 'leader' && !this.stopped) {
        const next = this.pending.entries().next();
        if (next.done) break;
        const [key, value] = next.value;
        this.pending.delete(key);
        try {
          if (value === null) await this.kv.delete(key);
          else await this.kv.put(key, value);
          this.counters.writes++;
          if (this.writeFailing) {
            this.writeFailing = false;
            this.log.info({ pending: this.pending.size }, 'plans bucket writes go through again');
          }
        } catch (err) {
          if (!this.pending.has(key)) this.pending.set(key, value);
          this.counters.writeFailures++;
          this.writeFailuresMetric.inc();
          if (!this.writeFailing || this.due('write')) {
            this.writeFailing = true;
            this.log.warn(
              { key, pending: this.pending.size, err: errText(err) },
              'writing the plans bucket failed (NATS away?): plans are served from memory, the write is retried every second',
            );
          }
          this.retryTimer = setTimeout(() => {
            this.retryTimer = undefined;
            void this.flush();
          }, WRITE_RETRY_MS);
          this.retryTimer.unref();
          break;
        }
      }
    } finally {
      this.flushing = false;
    }
  }

  /** One election step: a leader renews (or steps down), a standby watches the lease and takes it when free or stale. */
  private async tick(): Promise<void> {
    if (this.stopped) return;
    // Fencing first, even while a request hangs (the fence timer normally fires before this).
    this.fence();
    if (this.ticking || !this.lease) return;
    this.ticking = true;
    const sentAt = this.now();
    const value = Buffer.from(this.id, 'utf8');
    try {
      if (this.current === 'leader') {
        this.leaseRev = await this.lease.update(LEADER_KEY, value, this.leaseRev);
        if (this.current === 'leader') this.renewed(sentAt);
        return;
      }
      const e = await this.lease.get(LEADER_KEY);
      let rev: number | undefined;
      if (!e) rev = await this.lease.put(LEADER_KEY, value, { previousSeq: 0 });
      else if (e.operation !== 'PUT') rev = await this.lease.update(LEADER_KEY, value, e.revision);
      else {
        const holder = e.string();
        if (holder === this.id) rev = await this.lease.update(LEADER_KEY, value, e.revision);
        else if (!this.seen || this.seen.rev !== e.revision) this.seen = { rev: e.revision, id: holder, sinceMs: sentAt };
        else if (sentAt - this.seen.sinceMs >= this.opts.leaseMs) {
          this.log.info({ leader: holder, silentMs: sentAt - this.seen.sinceMs }, 'the leader stopped renewing its lease: taking over');
          rev = await this.lease.update(LEADER_KEY, value, e.revision);
        }
      }
      if (rev !== undefined && !this.stopped) {
        this.leaseRev = rev;
        this.seen = undefined;
        this.setRole('leader', 'took the lead');
        this.renewed(sentAt);
      }
    } catch (err) {
      if (wrongSequence(err)) {
        if (this.current === 'leader') this.setRole('standby', 'another planner holds the lease now: standing by');
        // A standby lost a race for the lease: the winner leads.
      } else this.warnEvery('lease', { role: this.current, err: errText(err) }, 'the leader lease could not be read or written (NATS away?)');
    } finally {
      this.ticking = false;
    }
  }

  /** How long after its last renewal was sent a leader stands by on its own, ms: 7/8 of a lease. */
  private get fenceMs(): number {
    return this.opts.leaseMs * FENCE;
  }

  /**
   * A renewal (or the taking) sent at sentAt went through: the leader stands by fenceMs after
   * it unless another one goes through first. A standby takes over no sooner than a whole
   * lease after that renewal was sent (it counts from when it first saw it), so the eighth of
   * a lease between the two is the margin for this timer firing late on a busy event loop.
   */
  private renewed(sentAt: number): void {
    this.renewedAt = sentAt;
    clearTimeout(this.fenceTimer);
    this.fenceTimer = setTimeout(() => this.fence(), Math.max(0, sentAt + this.fenceMs - this.now()));
    this.fenceTimer.unref();
  }

  /** Stands a leader by when no renewal went through for fenceMs. */
  private fence(): void {
    if (this.current === 'leader' && !this.stopped && this.now() - this.renewedAt >= this.fenceMs) {
      this.setRole('standby', 'no lease renewal went through for 7/8 of a lease (NATS away?): standing by before a standby may take over');
    }
  }

  private setRole(role: PlannerRole, why: string): void {
    if (this.current === role) return;
    this.current = role;
    this.counters.leaderChanges++;
    if (role === 'standby') {
      clearTimeout(this.fenceTimer);
      this.fenceTimer = undefined;
      clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
      if (this.pending.size) this.log.warn({ dropped: this.pending.size }, 'unwritten plan changes dropped: the next leader re-plans from its own state');
      this.pending.clear();
    }
    this.log.info({ id: this.id, role, leaseMs: this.opts.leaseMs }, why);
    this.listener.role(role);
  }

  private due(what: string): boolean {
    const now = this.now();
    if (now - (this.lastWarn.get(what) ?? -Infinity) < WARN_EVERY_MS) return false;
    this.lastWarn.set(what, now);
    return true;
  }

  private warnEvery(what: string, fields: Record<string, unknown>, msg: string): void {
    if (this.due(what)) this.log.warn(fields, msg);
  }

  /**
   * Stops the election and the watch. A leader first writes what is queued (best effort, up
   * to the lease) and then deletes its lease, so a standby takes over at its next step
   * instead of after the lease.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    clearInterval(this.tickTimer);
    clearTimeout(this.fenceTimer);
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    if (this.current === 'leader' && this.lease) {
      const until = this.now() + this.opts.leaseMs;
      while (this.pending.size > 0 && this.now() < until) {
        await this.flush();
        if (this.pending.size > 0) await new Promise((r) => setTimeout(r, 50));
        clearTimeout(this.retryTimer);
        this.retryTimer = undefined;
      }
      await this.lease.delete(LEADER_KEY, { previousSeq: this.leaseRev }).catch((err: unknown) => {
        this.log.warn({ err: errText(err) }, 'releasing the leader lease failed; a standby takes over when it expires');
      });
    }
    this.stopped = true;
    this.watchStop?.();
  }
}
