import { planKey } from '@tandem/dp';
import * as grpc from '@grpc/grpc-js';
import { AgentServiceClient, channelOptions, PlannerServiceClient, type GenerateResponse } from '@tandem/protocol';
import type { TraceRequest } from './arrivals';
import type { RequestRecord } from './metrics';

const MAX_MESSAGE = 64 * 1024 * 1024;

export function agentClient(addr: string): AgentServiceClient {
  return new AgentServiceClient(addr, grpc.credentials.createInsecure(), channelOptions(MAX_MESSAGE));
}

export function plannerClient(addr: string): PlannerServiceClient {
  return new PlannerServiceClient(addr, grpc.credentials.createInsecure(), channelOptions(MAX_MESSAGE));
}

const statusName = (code: number): string => (grpc.status as unknown as Record<number, string>)[code] ?? `CODE_${code}`;

/**
 * Sends one Generate and records its token times. Never rejects: a failure (including the
 * `timeoutMs` deadline, which gives DEADLINE_EXCEEDED) becomes the record's status.
 * `t0` is the trace's start (performance.now()).
 */
export function sendGenerate(c: AgentServiceClient, req: TraceRequest, t0: number, timeoutMs: number): Promise<RequestRecord> {
  const sent = performance.now();
  const base = {
    index: req.index,
    device: req.device,
    requestClass: req.requestClass,
    promptTokens: req.promptIds.length,
    maxNewTokens: req.maxNewTokens,
    slo: req.slo,
    sentMs: sent - t0,
    lagMs: Math.max(0, sent - t0 - req.atMs),
  };
  const tokenMs: number[] = [];
  return new Promise<RequestRecord>((resolve) => {
    let settled = false;
    let summary: Extract<GenerateResponse['kind'], { $case: 'summary' }>['value'] | undefined;
    const finish = (status: string, error?: string): void => {
      if (settled) return;
      settled = true;
      const endMs = performance.now() - sent;
      resolve({
        ...base,
        status,
        ...(error ? { error } : {}),
        tokenMs,
        endMs,
        ...(summary
          ? {
              serverComputeMs: summary.serverComputeMs,
              clientComputeMs: summary.clientComputeMs,
              // A phased generation is named by both placements (prefill/decode), as the planner names its plan.
              placement: planKey(summary),
              planEpoch: Number(summary.planEpoch),
              plannedClass: summary.requestClass,
              // The executor the summary names (agents that know it); others are joined by outcome (executors.ts).
              ...(summary.executorId ? { executorId: summary.executorId } : {}),
            }
          : {}),
        // 0 in the summary: no prediction.
        ...(summary && summary.predictedLatencyMs > 0 ? { predictedE2eMs: summary.predictedLatencyMs } : {}),
        ...(summary && summary.predictedTtftMs > 0 ? { predictedTtftMs: summary.predictedTtftMs } : {}),
        ...(summary && summary.predictedTpotMs > 0 ? { predictedTpotMs: summary.predictedTpotMs } : {}),
        ...(summary?.handoverMs !== undefined ? { handoverMs: summary.handoverMs } : {}),
      });
    };
    let call: grpc.ClientReadableStream<GenerateResponse>;
    try {
      call = c.generate(
        { input: { $case: 'ids', value: { ids: [...req.promptIds] } }, maxNewTokens: req.maxNewTokens, placement: '' },
        { deadline: Date.now() + timeoutMs },
      );
    } catch (err) {
      finish('INTERNAL', (err as Error).message);
      return;
    }
    call.on('data', (m: GenerateResponse) => {
      if (m.kind?.$case === 'token') tokenMs.push(performance.now() - sent);
      else if (m.kind?.$case === 'summary') summary = m.kind.value;
    });
    call.on('error', (e: grpc.ServiceError) => finish(statusName(e.code ?? grpc.status.UNKNOWN), e.details || e.message));
    call.on('end', () => (summary ? finish('OK') : finish('NO_SUMMARY', 'the stream ended without a summary')));
  });
}
