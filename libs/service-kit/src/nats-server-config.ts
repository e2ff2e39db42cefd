import { nkeys } from '@nats-io/transport-node';
import { ID_PATTERN, Subjects } from '@tandem/protocol';
import { newSecret } from './security';

/** Who a NATS user is: one client-agent, one server-executor, or the planner. */
export type NatsRole = 'agent' | 'executor' | 'planner';

/**
 * How the generated configuration authenticates each user:
 * - `password`: a random password per user, written into the configuration (keep it private);
 * - `password-env`: a password per user that nats-server reads from its environment
 *   (`password: $NATS_PASSWORD_<ID>`), so the file holds no secret and can be shipped;
 * - `nkey`: an NKEY per user; the configuration holds only public keys, each service a seed.
 */
export type NatsAuthMode = 'password' | 'password-env' | 'nkey';

export interface NatsServerConfigOptions {
  /** Client-agent ids (AGENT_ID), each a user of its own. */
  readonly agents: readonly string[];
  /** Server-executor ids (EXECUTOR_ID); default `['executor']`. */
  readonly executors?: readonly string[];
  readonly mode?: NatsAuthMode;
  /** `listen:` line (host:port); omitted when undefined (command-line -a/-p then decide). */
  readonly listen?: string;
  /**
   * The planner's JetStream key-value bucket (its PLANNER_STATE_BUCKET): the planner may use
   * it and `<bucket>-leader` (plannerStatePermissions). Default DEFAULT_PLANNER_STATE_BUCKET;
   * `off`: the planner gets no JetStream permission.
   */
  readonly plannerStateBucket?: string;
}

/** The planner's default state bucket (PLANNER_STATE_BUCKET): its plans in NATS JetStream key-value. */
export const DEFAULT_PLANNER_STATE_BUCKET = 'tandem-plans';

/**
 * What the planner needs of JetStream for its key-value buckets `bucket` (the plans) and
 * `<bucket>-leader` (the lease), and nothing of any other stream: the JetStream API requests
 * on those two streams (create, info, get, direct get, the watchers' consumers), puts on their
 * key subjects (`$KV.<bucket>.>`), flow-control replies of the watchers, and `_INBOX.>` for the
 * answers to its requests and the watchers' deliveries.
 */
export function plannerStatePermissions(bucket: string): { publish: string[]; subscribe: string[] } {
  const publish = ['$JS.API.INFO'];
  for (const b of [bucket, `${bucket}-leader`]) {
    const stream = `KV_${b}`;
    publish.push(
      `$JS.API.STREAM.*.${stream}`,
      `$JS.API.STREAM.MSG.GET.${stream}`,
      `$JS.API.DIRECT.GET.${stream}`,
      `$JS.API.DIRECT.GET.${stream}.>`,
      `$JS.API.CONSUMER.*.${stream}`,
      `$JS.API.CONSUMER.*.${stream}.>`,
      `$JS.FC.${stream}.>`,
      `$KV.${b}.>`,
    );
  }
  return { publish, subscribe: ['_INBOX.>'] };
}

/** One generated user and what its service needs to connect. */
export interface NatsUserCredential {
  readonly role: NatsRole;
  /** The agent or executor id, `planner` for the planner. */
  readonly id: string;
  /** NATS user name (password modes) or the public key (nkey mode). */
  readonly user: string;
  /** `password` mode: the password (NATS_PASSWORD). */
  readonly password?: string;
  /** `password-env` mode: the variable nats-server reads the password from (the service gets the same value as NATS_PASSWORD). */
  readonly passwordVar?: string;
  /** `nkey` mode: the user seed (the content of NATS_NKEY_SEED_FILE). */
  readonly seed?: string;
  /** Subjects it may publish on (everything else is denied). */
  readonly publish: readonly string[];
  /** Subjects it may subscribe to (everything else is denied). */
  readonly subscribe: readonly string[];
}

export interface NatsServerConfig {
  /** The nats-server configuration file's text. */
  readonly conf: string;
  readonly users: readonly NatsUserCredential[];
}

/**
 * What each role may do: the least its service needs (docs/security.md (NATS)). The planner
 * also gets its state buckets (plannerStatePermissions of `plannerStateBucket`, unless `off`).
 */
export function natsPermissions(role: NatsRole, id: string, plannerStateBucket = DEFAULT_PLANNER_STATE_BUCKET): { publish: string[]; subscribe: string[] } {
  switch (role) {
    case 'agent':
      return { publish: [Subjects.clientProfile(id), Subjects.outcome(id)], subscribe: [] };
    case 'executor':
      return { publish: [Subjects.serverLoad(id)], subscribe: [] };
    case 'planner': {
      const telemetry = [Subjects.allClientProfiles, Subjects.allServerLoads, Subjects.allOutcomes];
      if (plannerStateBucket === 'off') return { publish: [], subscribe: telemetry };
      const state = plannerStatePermissions(plannerStateBucket);
      return { publish: state.publish, subscribe: [...telemetry, ...state.subscribe] };
    }
  }
}

/** The environment variable a `password-env` user's password is read from. */
export function natsPasswordVar(id: string): string {
  return `NATS_PASSWORD_${id.toUpperCase().replace(/-/g, '_')}`;
}

const q = (s: string): string => JSON.stringify(s);
const list = (xs: readonly string[]): string => `[${xs.map(q).join(', ')}]`;
/** An allow list, or deny everything when it is empty (an empty allow list would not restrict). */
const rule = (xs: readonly string[]): string => (xs.length ? `{ allow: ${list(xs)} }` : `{ deny: [">"] }`);

/**
 * A nats-server configuration (nats-server 2.9 or later) with one user per agent, per executor
 * and for the planner, each allowed only its own subjects: an agent publishes its profile and
 * outcomes and subscribes to nothing, an executor publishes its load and subscribes to
 * nothing, the planner subscribes to the telemetry and publishes nothing but the JetStream
 * requests of its own state buckets (plannerStatePermissions). Connections without
 * credentials are refused. The planner's state needs JetStream on the server (`-js -sd DIR`).
 * @throws Error naming the id when an id is not a valid subject token or is used twice.
 */
export function natsServerConfig(opts: NatsServerConfigOptions): NatsServerConfig {
  const mode = opts.mode ?? 'password';
  const ids: { role: NatsRole; id: string }[] = [
    { role: 'planner', id: 'planner' },
    ...(opts.executors ?? ['executor']).map((id) => ({ role: 'executor' as const, id })),
    ...opts.agents.map((id) => ({ role: 'agent' as const, id })),
  ];
  const seen = new Map<string, string>();
  for (const { role, id } of ids) {
    if (!ID_PATTERN.test(id)) throw new Error(`${role} id must match ${ID_PATTERN}, given '${id.slice(0, 64)}'`);
    const key = mode === 'password-env' ? natsPasswordVar(id) : id;
    const other = seen.get(key);
    if (other !== undefined)
      throw new Error(`${role} id '${id}' is used twice (also as ${other}); every agent, executor and the planner needs a user of its own`);
    seen.set(key, `${role} '${id}'`);
  }
  const users: NatsUserCredential[] = ids.map(({ role, id }) => {
    const perms = natsPermissions(role, id, opts.plannerStateBucket);
    if (mode === 'nkey') {
      const kp = nkeys.createUser();
      return { role, id, user: kp.getPublicKey(), seed: new TextDecoder().decode(kp.getSeed()), ...perms };
    }
    if (mode === 'password-env') return { role, id, user: id, passwordVar: natsPasswordVar(id), ...perms };
    return { role, id, user: id, password: newSecret(), ...perms };
  });
  const lines = [
    '# Tandem: one NATS user per service, each allowed only its own subjects (docs/security.md (NATS)).',
    `# Generated by \`tandem nats-config\` (mode ${mode}).`,
    ...(mode === 'password-env' ? ['# Each password is read from the environment of nats-server: set every NATS_PASSWORD_* below.'] : []),
    ...(mode === 'password' ? ['# Holds the passwords: keep this file private (mode 0600).'] : []),
    ...(opts.listen ? [`listen: ${q(opts.listen)}`] : []),
    'authorization {',
    '  users = [',
    ...users.map((u) => {
      const cred =
        u.seed !== undefined
          ? `nkey: ${q(u.user)}`
          : u.passwordVar !== undefined
            ? `user: ${q(u.user)}, password: $${u.passwordVar}`
            : `user: ${q(u.user)}, password: ${q(u.password ?? '')}`;
      return `    # ${u.role === u.id ? u.role : `${u.role} ${u.id}`}\n    { ${cred}, permissions: { publish: ${rule(u.publish)}, subscribe: ${rule(u.subscribe)} } }`;
    }),
    '  ]',
    '}',
    '',
  ];
  return { conf: lines.join('\n'), users };
}

/** The service environment (NATS_USER/NATS_PASSWORD, or NATS_NKEY_SEED_FILE naming `seedFile`) for one generated user. */
export function natsServiceEnv(u: NatsUserCredential, seedFile?: string): Record<string, string> {
  if (u.seed !== undefined) {
    if (!seedFile) throw new Error(`the nkey user of ${u.role} '${u.id}' needs the file its seed is written to`);
    return { NATS_NKEY_SEED_FILE: seedFile };
  }
  if (u.password === undefined) throw new Error(`${u.role} '${u.id}' reads its password from ${u.passwordVar}: set NATS_PASSWORD to its value`);
  return { NATS_USER: u.user, NATS_PASSWORD: u.password };
}
