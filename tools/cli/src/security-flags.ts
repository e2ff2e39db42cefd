import { ConfigError, loadClientSecurity, type ClientSecurity } from '@tandem/service-kit';
import type { ParsedArgs } from './args';
import { UsageError } from './errors';

/** Flags of every command that calls a Tandem service over gRPC (docs/security.md). */
export const SECURITY_FLAGS = ['tls-ca', 'tls-cert', 'tls-key', 'token'] as const;

/** Usage lines of SECURITY_FLAGS. */
export const SECURITY_USAGE = `  --tls-ca FILE    connect over TLS, trusting this PEM CA (e.g. ca.crt of \`tandem certs\`);
                   default: $TANDEM_TLS_CA, else plaintext
  --tls-cert FILE  client certificate for mTLS (with --tls-key; default $TANDEM_TLS_CERT)
  --tls-key FILE   its private key (default $TANDEM_TLS_KEY)
  --token TOKEN    bearer token sent as 'authorization: Bearer TOKEN' (default $TANDEM_TOKEN)`;

/**
 * Credentials and token from the security flags, else from TANDEM_TLS_CA, TANDEM_TLS_CERT,
 * TANDEM_TLS_KEY and TANDEM_TOKEN in `environment`.
 * @throws UsageError naming the flag and the path of a missing or malformed file.
 */
export function clientSecurityFlags(args: ParsedArgs, environment: Readonly<Record<string, string | undefined>> = process.env): ClientSecurity {
  const pick = (flag: string, variable: string): { value: string; name: string } => {
    const v = args.flags.get(flag);
    if (v !== undefined) return { value: v, name: `--${flag}` };
    const e = environment[variable] ?? '';
    // Named by the flag unless the value came from the variable.
    return { value: e, name: e ? variable : `--${flag}` };
  };
  const ca = pick('tls-ca', 'TANDEM_TLS_CA');
  const cert = pick('tls-cert', 'TANDEM_TLS_CERT');
  const key = pick('tls-key', 'TANDEM_TLS_KEY');
  const token = pick('token', 'TANDEM_TOKEN');
  try {
    return loadClientSecurity({
      caFile: ca.value,
      certFile: cert.value,
      keyFile: key.value,
      token: token.value,
      names: { ca: ca.name, cert: cert.name, key: key.name, token: token.name },
    });
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.problems.join('; '));
    throw err;
  }
}
