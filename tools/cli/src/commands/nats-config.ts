import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { ID_PATTERN } from '@tandem/protocol';
import { natsServerConfig, natsServiceEnv, type NatsAuthMode, type NatsUserCredential } from '@tandem/service-kit';
import { parseArgs, required } from '../args';
import type { Command } from '../command';
import { UsageError } from '../errors';
import { printJson, type CliIo } from '../io';

const MODES: readonly NatsAuthMode[] = ['password', 'password-env', 'nkey'];

const USAGE = `usage: tandem nats-config --agents ID,ID,... [--executors ID,...] [--auth MODE] --out DIR [--json]

Writes a nats-server configuration (DIR/nats-server.conf, nats-server 2.9 or later) with one
user per client-agent, per server-executor and for the planner, each allowed only the
subjects its service needs: an agent publishes its own profile and outcome subjects, the
executor its load, the planner subscribes to the telemetry; nothing else, and connections
without credentials are refused. Run nats-server with -c DIR/nats-server.conf and give each
service its credentials (docs/security.md (NATS)).

  --agents IDS     the client-agents' AGENT_IDs, comma-separated (at least one)
  --executors IDS  the server-executors' EXECUTOR_IDs (default: executor)
  --auth MODE      password (default): random passwords, in the configuration and in
                   DIR/ID.env (NATS_USER, NATS_PASSWORD) per service; every file is mode 0600
                   password-env: the configuration reads each password from nats-server's
                   environment (NATS_PASSWORD_<ID>), so it holds no secret (deploy/ does this);
                   no credential files are written
                   nkey: an NKEY per service; the configuration holds public keys only, each
                   service its seed in DIR/ID.nk and DIR/ID.env (NATS_NKEY_SEED_FILE)
  --out DIR        directory to write to (created; an existing nats-server.conf is not replaced)
  --json           print what was written (files, users, permissions; never a secret) as JSON

Exit codes: 0 written, 2 bad usage, 1 a file could not be written.`;

/** A comma-separated list of ids. @throws UsageError naming the flag. */
function idList(flag: string, raw: string): string[] {
  const ids = raw.split(',').map((s) => s.trim());
  for (const id of ids)
    if (!ID_PATTERN.test(id)) throw new UsageError(`--${flag} must be a comma-separated list of ids matching ${ID_PATTERN}, given '${raw.slice(0, 200)}'`);
  return ids;
}

/** `tandem nats-config`: a least-privilege nats-server configuration and each service's credentials. */
export const natsConfigCommand: Command = {
  path: ['nats-config'],
  summary: 'write a nats-server configuration with one least-privilege user per service, and their credentials',
  usage: USAGE,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const args = parseArgs(argv, { flags: ['agents', 'executors', 'auth', 'out'], switches: ['json'] });
    const agents = idList('agents', required(args, 'agents'));
    const executors = idList('executors', args.flags.get('executors') ?? 'executor');
    const mode = (args.flags.get('auth') ?? 'password') as NatsAuthMode;
    if (!MODES.includes(mode)) throw new UsageError(`--auth must be one of ${MODES.join(', ')}, given '${mode}'`);
    const out = path.resolve(required(args, 'out'));
    const confFile = path.join(out, 'nats-server.conf');
    if (existsSync(confFile))
      throw new UsageError(`--out must be a directory without a nats-server.conf (it is not replaced: the services hold credentials for it), given '${out}'`);
    let cfg;
    try {
      cfg = natsServerConfig({ agents, executors, mode });
    } catch (err) {
      throw new UsageError(`--agents/--executors: ${(err as Error).message}`, { cause: err });
    }
    mkdirSync(out, { recursive: true });
    const written: string[] = [confFile];
    writeFileSync(confFile, cfg.conf, { mode: 0o600 });
    const envLines = (u: NatsUserCredential, seedFile?: string): string =>
      Object.entries(natsServiceEnv(u, seedFile))
        .map(([k, v]) => `${k}=${v}`)
        .join('\n');
    for (const u of cfg.users) {
      if (mode === 'password-env') continue;
      let seedFile: string | undefined;
      if (u.seed !== undefined) {
        seedFile = path.join(out, `${u.id}.nk`);
        writeFileSync(seedFile, `${u.seed}\n`, { mode: 0o600 });
        written.push(seedFile);
      }
      const envFile = path.join(out, `${u.id}.env`);
      writeFileSync(envFile, `# NATS credentials of ${u.role} ${u.id} (docs/security.md (NATS))\n${envLines(u, seedFile)}\n`, { mode: 0o600 });
      written.push(envFile);
    }
    const users = cfg.users.map((u) => ({
      role: u.role,
      id: u.id,
      user: u.user,
      ...(u.passwordVar ? { passwordVar: u.passwordVar } : {}),
      publish: u.publish,
      subscribe: u.subscribe,
    }));
    if (args.switches.has('json')) {
      printJson(io, { mode, files: written, users });
      return 0;
    }
    io.stdout.write(`wrote ${written.length} files to ${out} (mode ${mode}):\n`);
    for (const f of written) io.stdout.write(`  ${path.relative(process.cwd(), f) || f}\n`);
    io.stdout.write(`run: nats-server -c ${confFile}\n`);
    if (mode === 'password-env')
      io.stdout.write(
        `set in nats-server's environment, and as NATS_USER/NATS_PASSWORD of each service: ${users.map((u) => `${u.passwordVar} (user ${u.user})`).join(', ')}\n`,
      );
    else io.stdout.write('give each service the variables of its ID.env file; keep them private\n');
    return 0;
  },
};
