import * as grpc from '@grpc/grpc-js';
import type {
  AgentServiceClient,
  AgentStatusResponse,
  GeneratedToken,
  GenerateRequest,
  GenerateResponse,
  GenerationSummary,
  ListPlansResponse,
  PlannerServiceClient,
} from '@tandem/protocol';

/** The planner's current plans. */
export function listPlans(client: PlannerServiceClient, deadlineMs: number): Promise<ListPlansResponse> {
  return new Promise((resolve, reject) =>
    client.listPlans({}, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (err, r) => (err ? reject(err) : resolve(r))));
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
