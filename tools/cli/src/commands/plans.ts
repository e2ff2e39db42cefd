import * as grpc from '@grpc/grpc-js';
import { MAX_PLANS_PAGE_SIZE } from '@tandem/planner';
import { listPlans, ListPlansResponse, PlannerServiceClient } from '@tandem/protocol';
import { clientOptions } from '@tandem/service-kit';
import { intFlag, parseArgs, required } from '../args';
import type { Command } from '../command';
import { ServiceCallError, UsageError } from '../errors';
import { printJson, type CliIo } from '../io';
import { clientSecurityFlags, SECURITY_FLAGS, SECURITY_USAGE } from '../security-flags';
import { formatPlans } from '../views/plans';

/** Deadline of the whole listing (every ListPlans page). */
export const PLANS_DEADLINE_MS = 30_000;

const USAGE = `usage: tandem plans --planner ADDR [--page-size N] [--tls-ca FILE [--tls-cert FILE --tls-key FILE]] [--token TOKEN] [--json]

Shows the planner's current plan of every client it knows (its ListPlans API): per request
class, the placement (one letter per stage: C on the client, S on the server; a phased plan,
PLANNER_ALGORITHM=dp-phased, shows the prefill's then the decode's: 'SSSS -> CCCC'), the SLA, the
predicted end-to-end latency and server work, and whether the SLA is predicted to be met.
Once a client's agent has reported outcomes, a second table shows what the planner observed
per class: outcomes and failures, the SLO attainment of the plan in force (against the
target), predicted against observed end-to-end latency (median and mean of the recent
generations), the observed error of its predictions (obs/pred, decayed), and the correction
factor and the safety factor on the SLA ('all-server' at its floor) it plans with
(docs/planner.md). The executors the planner hears from come first, with the clients whose
plans name each; with several executors advertising an address, each plan names its executor
(a column) and its alternates (docs/planner.md, "Several executors").

  --planner ADDR   the planner's gRPC address, host:port
  --page-size N    plans per ListPlans call, 1..5000 (default: the planner's, 1000); every
                   page is fetched and listed, so a planner with any number of clients fits
  --json           print the ListPlansResponse as canonical protobuf JSON ('plans', and
                   'observations' per client in the same order): fields at their default
                   value are omitted (feasible=false, a zero count, and 'plans' itself when
                   there are none: {})
${SECURITY_USAGE}
                   (a planner with AUTH_TOKENS_FILE lists plans only for an operator token)

Exit codes: 0 listed (also when there are no plans yet), 2 bad usage, 1 the planner could not
be reached or failed (the line names its status code and message).`;

/** `host:port` with a port in 1..65535. @throws UsageError naming the flag. */
export function addressFlag(flag: string, value: string): string {
  const m = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[2]) : 0;
  if (!m || port < 1 || port > 65535) throw new UsageError(`--${flag} must be host:port with a port in 1..65535, given '${value}'`);
  return value;
}

/** `tandem plans`: the planner's current plans, every page. */
export const plansCommand: Command = {
  path: ['plans'],
  summary: "list a running planner's current plans (placement per client and request class) and what it observed",
  usage: USAGE,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const args = parseArgs(argv, { flags: ['planner', 'page-size', ...SECURITY_FLAGS], switches: ['json'] });
    const addr = addressFlag('planner', required(args, 'planner'));
    const pageSize = intFlag(args, 'page-size', { min: 1, max: MAX_PLANS_PAGE_SIZE, default: 0 });
    const sec = clientSecurityFlags(args);
    const client = new PlannerServiceClient(addr, sec.credentials, clientOptions(sec));
    let r: ListPlansResponse;
    try {
      r = await listPlans(client, PLANS_DEADLINE_MS, pageSize);
    } catch (err) {
      throw ServiceCallError.of(`the planner at ${addr}`, 'ListPlans', err, (code) =>
        code === grpc.status.UNAVAILABLE ? ' (is it running?)' : code === grpc.status.DEADLINE_EXCEEDED ? ` (no answer within ${PLANS_DEADLINE_MS} ms)` : '',
      );
    } finally {
      client.close();
    }
    if (args.switches.has('json')) printJson(io, ListPlansResponse.toJSON(r));
    else io.stdout.write(`${formatPlans(r)}\n`);
    return 0;
  },
};
