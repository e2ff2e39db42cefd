/**
 * gRPC addresses as Tandem's services name one another: `host:port`, where host is a DNS name,
 * an IPv4 address or a bracketed IPv6 address, and port is 1..65535. The planner hands these
 * out in plans (ClientPlan.executor) and executors advertise them (ServerLoad.address), so the
 * check is strict and bounded: anything else is refused by whoever reads it.
 */

/** Longest address accepted, characters (a DNS name is at most 253, plus ':' and the port). */
export const MAX_ADDRESS_CHARS = 260;

const NAME = /^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?$/;
const V6 = /^\[[0-9A-Fa-f:.]{2,45}(?:%[A-Za-z0-9_.-]{1,32})?\]$/;

/** Why `address` is not `host:port` with a port in 1..65535, or undefined when it is. O(length), bounded. */
export function addressProblem(address: string): string | undefined {
  if (address.length === 0) return 'must be host:port, given an empty string';
  if (address.length > MAX_ADDRESS_CHARS) return `must be host:port of at most ${MAX_ADDRESS_CHARS} characters, given ${address.length}`;
  const i = address.lastIndexOf(':');
  if (i <= 0) return 'must be host:port (no port given)';
  const host = address.slice(0, i);
  const port = address.slice(i + 1);
  if (!/^\d{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) return 'must be host:port with a port in 1..65535';
  if (!(host.startsWith('[') ? V6.test(host) : NAME.test(host))) return 'must be host:port with a host name, an IPv4 address or a bracketed IPv6 address';
  return undefined;
}

/**
 * Why `value` is not a list of at most `max` addresses separated by commas (each `host:port`,
 * blanks around an entry allowed), or undefined when it is.
 */
export function addressListProblem(value: string, max: number): string | undefined {
  const entries = value.split(',').map((a) => a.trim());
  if (entries.length > max) return `must list at most ${max} addresses separated by commas, given ${entries.length}`;
  for (const [i, a] of entries.entries()) {
    if (a === '' && entries.length > 1) return `entry ${i + 1} is empty (a comma too many)`;
    const problem = addressProblem(a);
    if (problem) return entries.length > 1 ? `entry ${i + 1} (${a.length > 40 ? a.slice(0, 40) + '…' : a}) ${problem}` : problem;
  }
  return undefined;
}

/** The addresses of a list `addressListProblem` accepts. */
export function addressList(value: string): string[] {
  return value.split(',').map((a) => a.trim());
}

/** Whether a listen address's host is a wildcard (0.0.0.0, ::, [::] or empty): it names no one interface clients could reach. */
export function isWildcardHost(host: string): boolean {
  return host === '' || host === '0.0.0.0' || host === '::' || host === '[::]' || host === '*';
}
