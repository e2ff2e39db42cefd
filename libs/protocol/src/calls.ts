import * as grpc from '@grpc/grpc-js';
import type {
  AgentServiceClient,
  GeneratedToken,
  GenerateRequest,
  GenerateResponse,
  GenerationSummary,
  GetStatusResponse as AgentStatusResponse,
} from './generated/tandem/agent/v1/agent';
import type { ExecutorServiceClient, GetStatusResponse, ProbeLinkResponse } from './generated/tandem/executor/v1/executor';
import type { ListPlansRequest, ListPlansResponse, PlannerServiceClient } from './generated/tandem/planner/v1/planner';

// Calls of the services' APIs as promises, each with a deadline (a default when none is given).

/** Deadline of a status or listing call when the caller gives none, ms. */
export const DEFAULT_CALL_DEADLINE_MS = 2000;
/** Deadline of a whole generation when the caller gives none, ms. */
export const DEFAULT_GENERATE_DEADLINE_MS = 30_000;

/** One page of the planner's plans; `deadline` is absolute (Date.now() based). */
export function listPlansPage(client: PlannerServiceClient, request: ListPlansRequest, deadline: number): Promise<ListPlansResponse> {
  return new Promise((resolve, reject) => client.listPlans(request, new grpc.Metadata(), { deadline }, (err, r) => (err ? reject(err) : resolve(r))));
}

/**
 * The planner's current plans, every page (ListPlans pages of `pageSize`, 0 = the planner's
 * default), merged into one answer with no next page (and the planner's role, as its last page said). `deadlineMs` bounds the whole listing.
 * @throws the first page's error; Error when the planner hands back a token it handed before (it would never end).
 */
export async function listPlans(client: PlannerServiceClient, deadlineMs = DEFAULT_CALL_DEADLINE_MS, pageSize = 0): Promise<ListPlansResponse> {
  const deadline = Date.now() + deadlineMs;
  const out: ListPlansResponse = { plans: [], observations: [], nextPageToken: '', executors: [] };
  const seen = new Set<string>();
  let pageToken = '';
  do {
    const r = await listPlansPage(client, { pageSize, pageToken }, deadline);
    out.plans.push(...r.plans);
    out.observations.push(...r.observations);
    // The executors come with the first page.
    if (out.executors.length === 0) out.executors = r.executors;
    // The role of the planner that answered the last page (leader or standby; unset without state).
    if (r.plannerRole !== undefined) out.plannerRole = r.plannerRole;
    else delete out.plannerRole;
    pageToken = r.nextPageToken;
    if (seen.has(pageToken)) throw new Error(`the planner answered next_page_token ${JSON.stringify(pageToken.slice(0, 48))} twice`);
    seen.add(pageToken);
  } while (pageToken !== '');
  return out;
}

/** An agent's state (plan epoch, placements, counters). */
export function agentStatus(client: AgentServiceClient, deadlineMs = DEFAULT_CALL_DEADLINE_MS): Promise<AgentStatusResponse> {
  return new Promise((resolve, reject) =>
    client.getStatus({}, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (err, r) => (err ? reject(err) : resolve(r))),
  );
}

/** The executor's state (sessions, steps, load). */
export function executorStatus(client: ExecutorServiceClient, deadlineMs = DEFAULT_CALL_DEADLINE_MS): Promise<GetStatusResponse> {
  return new Promise((resolve, reject) =>
    client.getStatus({}, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (err, r) => (err ? reject(err) : resolve(r))),
  );
}

/** A link probe (ExecutorService.ProbeLink): `upBytes` zero bytes up, `replyBytes` asked back. */
export function probeLink(
  client: ExecutorServiceClient,
  upBytes: number,
  replyBytes: number,
  deadlineMs = DEFAULT_CALL_DEADLINE_MS,
): Promise<ProbeLinkResponse> {
  return new Promise((resolve, reject) =>
    client.probeLink({ payload: Buffer.alloc(upBytes), replyBytes }, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (err, r) =>
      err ? reject(err) : resolve(r),
    ),
  );
}

/** What one Generate call streamed: every token (and their ids), then the summary. */
export interface GenerationResult {
  readonly tokens: GeneratedToken[];
  readonly ids: number[];
  readonly summary: GenerationSummary;
  /** Wall time of the call as the caller saw it, ms. */
  readonly wallMs: number;
}

/**
 * Runs one generation through an agent's Generate API and collects its stream; `signal`
 * cancels the call.
 * @throws the call's ServiceError; Error when the stream ends without a summary.
 */
export function generateVia(
  client: AgentServiceClient,
  req: GenerateRequest,
  deadlineMs = DEFAULT_GENERATE_DEADLINE_MS,
  signal?: AbortSignal,
): Promise<GenerationResult> {
  return new Promise((resolve, reject) => {
    signal?.throwIfAborted();
    const t0 = performance.now();
    const tokens: GeneratedToken[] = [];
    let summary: GenerationSummary | undefined;
    const call = client.generate(req, new grpc.Metadata(), { deadline: Date.now() + deadlineMs });
    const cancel = (): void => call.cancel();
    signal?.addEventListener('abort', cancel, { once: true });
    call.on('close', () => signal?.removeEventListener('abort', cancel));
    call.on('data', (m: GenerateResponse) => {
      if (m.kind?.$case === 'token') tokens.push(m.kind.value);
      else if (m.kind?.$case === 'summary') summary = m.kind.value;
    });
    call.on('error', reject);
    call.on('end', () => {
      if (summary) resolve({ tokens, ids: tokens.map((t) => t.id), summary, wallMs: performance.now() - t0 });
      else reject(new Error('Generate ended without a summary'));
    });
  });
}
