import { makeCertificates } from '@tandem/service-kit';
import { parseArgs, required } from '../args';
import type { Command } from '../command';
import { UsageError } from '../errors';
import { printJson, type CliIo } from '../io';

const USAGE = `usage: tandem certs --out DIR [--host NAME,...] [--days N] [--client-name NAME] [--json]

Makes a local certificate authority and, signed by it, a server certificate and a client
certificate (ECDSA P-256), for the demo, the tests and trying TLS and mTLS on one machine
(docs/security.md). It runs the openssl binary (Node's crypto cannot issue certificates).
Files written in DIR (keys mode 0600):

  ca.crt        the CA to trust: TLS_CA_FILE (mTLS), UPSTREAM_TLS_CA_FILE, --tls-ca
  ca.key        the CA's key (only to issue more; keep it off serving machines)
  server.crt    server certificate for the hosts: TLS_CERT_FILE
  server.key    its key: TLS_KEY_FILE
  client.crt    client certificate: UPSTREAM_TLS_CERT_FILE, --tls-cert
  client.key    its key: UPSTREAM_TLS_KEY_FILE, --tls-key

  --out DIR            directory to write (created; existing files are replaced)
  --host LIST          names and IP addresses the server certificate is valid for,
                       comma-separated (default 127.0.0.1,::1,localhost)
  --days N             validity in days, 1..3650 (default 30)
  --client-name NAME   common name of the client certificate (default tandem-client)
  --json               print the paths as JSON

Exit codes: 0 written, 2 bad usage, 1 openssl missing or failed.`;

/** `tandem certs`: a local CA and server/client certificates. */
export const certsCommand: Command = {
  path: ['certs'],
  summary: 'make a local CA and server/client certificates for TLS and mTLS (demo, tests)',
  usage: USAGE,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const args = parseArgs(argv, { flags: ['out', 'host', 'days', 'client-name'], switches: ['json'] });
    const out = required(args, 'out');
    const hosts = (args.flags.get('host') ?? '127.0.0.1,::1,localhost').split(',').map((h) => h.trim());
    hosts.forEach((h, i) => {
      if (!/^[A-Za-z0-9.:-]{1,253}$/.test(h)) throw new UsageError(`--host[${i}] must be a DNS name or an IP address, given '${h.slice(0, 80)}'`);
    });
    const rawDays = args.flags.get('days') ?? '30';
    const days = Number(rawDays);
    if (!/^\d+$/.test(rawDays) || days < 1 || days > 3650) throw new UsageError(`--days must be an integer in 1..3650, given '${rawDays.slice(0, 80)}'`);
    const clientName = args.flags.get('client-name') ?? 'tandem-client';
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(clientName))
      throw new UsageError(`--client-name must be 1..64 letters, digits, '.', '-' or '_', given '${clientName.slice(0, 80)}'`);
    const set = makeCertificates(out, { hosts, days, clientName });
    if (args.switches.has('json')) printJson(io, set);
    else io.stdout.write(`wrote ${set.caCert}, ${set.serverCert} (${hosts.join(', ')}), ${set.clientCert} and their keys\n`);
    return 0;
  },
};
