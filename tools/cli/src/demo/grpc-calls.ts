import * as grpc from '@grpc/grpc-js';
import type {
  AgentServiceClient,
  AgentStatusResponse,
  GeneratedToken,
  GenerateRequest,
  GenerateResponse,
  GenerationSummary,
  ListPlansRequest,
  ListPlansResponse,
  PlannerServiceClient,
} from '@tandem/protocol';

/** One page of the planner's plans. */
export function listPlansPage(client: PlannerServiceClient, request: ListPlansRequest, deadline: number): Promise<ListPlansResponse> {
  return new Promise((resolve, reject) =>
    client.listPlans(request, new grpc.Metadata(), { deadline }, (err, r) => (err ? reject(err) : resolve(r))));
}

/**
 * The planner's current plans, every page (ListPlans pages of `pageSize`, 0 = the planner's
 * default), merged into one answer with no next page. `deadlineMs` bounds the whole listing.
 * @throws the first page's error; Error when the planner hands back a token it handed before (it would never end).
 */
export async function listPlans(client: PlannerServiceClient, deadlineMs: number, pageSize = 0): Promise<ListPlansResponse> {
  const deadline = Date.now() + deadlineMs;
  const out: ListPlansResponse = { plans: [], observations: [], nextPageToken: '' };
  const seen = new Set<string>();
  let pageToken = '';
  do {
    const r = await listPlansPage(client, { pageSize, pageToken }, deadline);
    out.plans.push(...r.plans);
    out.observations.push(...r.observations);
    pageToken = r.nextPageToken;
    if (seen.has(pageToken)) throw new Error(`the planner answered next_page_token ${JSON.stringify(pageToken.slice(0, 48))} twice`);
    seen.add(pageToken);
  } while (pageToken !== '');
  return out;
}

/** An agent's state (plan epoch, placements, counters). */
export function agentStatus(client: AgentServiceClient, deadlineMs: number): Promise<AgentStatusResponse> {
  return new Promise((resolve, reject) =>
    client.getStatus({}, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (err, r) => (err ? reject(err) : resolve(r))));
}

/** What one Generate call streamed: every token, then the summary. */
export interface GenerationResult {
  readonly tokens: GeneratedToken[];
  readonly summary: GenerationSummary;
  /** Wall time of the call as the demo saw it, ms. */
  readonly wallMs: number;
}

/** Runs one generation through an agent's Generate API and collects its stream. */
export function generateVia(client: AgentServiceClient, req: GenerateRequest, deadlineMs: number, signal?: AbortSignal): Promise<GenerationResult> {
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
    call.on('error', (e: grpc.ServiceError) => reject(new Error(`Generate failed: ${grpc.status[e.code] ?? e.code}: ${e.details || e.message}`)));
    call.on('end', () => {
      if (summary) resolve({ tokens, summary, wallMs: performance.now() - t0 });
      else reject(new Error('Generate ended without a summary'));
    });
  });
}
