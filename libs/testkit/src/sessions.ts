import type * as grpc from '@grpc/grpc-js';
import { toWireTensor, type ExecutorServiceClient, type SessionRequest, type SessionResponse } from '@tandem/protocol';

/**
 * One server-side generation on an executor: a session opened as `clientId` (its deadline
 * `deadlineMs` from now), then one `generate` of `maxNewTokens` after `ids`. Resolves with the
 * tokens and when each arrived (performance.now(), ms) once the call ends; rejects with the
 * status it ended with. `onToken` is told how many tokens have come.
 */
export function serverGeneration(
  client: ExecutorServiceClient,
  ids: readonly number[],
  maxNewTokens: number,
  opts: { readonly clientId: string; readonly deadlineMs: number; readonly onToken?: (count: number) => void },
): Promise<{ tokens: number[]; at: number[] }> {
  return new Promise((resolve, reject) => {
    const call: grpc.ClientDuplexStream<SessionRequest, SessionResponse> = client.session({ deadline: Date.now() + opts.deadlineMs });
    const tokens: number[] = [];
    const at: number[] = [];
    call.on('data', (m: SessionResponse) => {
      if (m.kind?.$case === 'opened') {
        const input = toWireTensor({ dtype: 'int64', shape: [1, ids.length], data: BigInt64Array.from(ids, BigInt) });
        call.write({ kind: { $case: 'generate', value: { seq: '1', input, maxNewTokens } } });
      } else if (m.kind?.$case === 'token') {
        at.push(performance.now());
        tokens.push(m.kind.value.token);
        opts.onToken?.(tokens.length);
        if (m.kind.value.last) call.end();
      }
    });
    call.on('error', reject);
    call.on('end', () => resolve({ tokens, at }));
    call.write({ kind: { $case: 'open', value: { clientId: opts.clientId, planEpoch: '0', modelId: '' } } });
  });
}
