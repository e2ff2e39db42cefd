import { Metadata, status } from '@grpc/grpc-js';
import { StageInputError } from '@tandem/model';
import { ValidationError } from '@tandem/service-kit';
import { toGrpcStatus } from './errors';
import { ExecutorLostError } from './generation';
import { StepRefusedError } from './remote-session';
import { ReplayMissError } from './replay';

/** A status as grpc-js rejects a call with it. */
const fromExecutor = (code: status, details: string) =>
  Object.assign(new Error(`${code} ${status[code]}: ${details}`), { code, details, metadata: new Metadata() });
const st = (err: unknown) => {
  const s = toGrpcStatus(err);
  return [status[s.code], s.details];
};

describe("the client-agent's status map", () => {
  it("keeps bad input the caller's fault and passes the executor's caller-facing statuses on", () => {
    expect(st(new ValidationError('ids[1] must be in 0..9, given 12'))).toEqual(['INVALID_ARGUMENT', 'ids[1] must be in 0..9, given 12']);
    expect(st(fromExecutor(status.FAILED_PRECONDITION, 'the context must stay <= 64 tokens'))).toEqual([
      'FAILED_PRECONDITION',
      'executor: the context must stay <= 64 tokens',
    ]);
    expect(st(new StepRefusedError('tokens of client must stay <= 8 per second', 120))).toEqual([
      'RESOURCE_EXHAUSTED',
      'executor: tokens of client must stay <= 8 per second',
    ]);
    expect(st(new ExecutorLostError('the executor session was lost'))).toEqual(['UNAVAILABLE', 'executor: the executor session was lost']);
    expect(st(new StageInputError('input.shape', 'be [1, T]', [2, 3]))).toEqual(['INVALID_ARGUMENT', 'local stage: input.shape must be [1, T], given [2,3]']);
    expect(st(new ReplayMissError('replay miss: step 3'))).toEqual(['FAILED_PRECONDITION', 'EMULATION: replay miss: step 3']);
  });

  it('answers anything else INTERNAL without its raw message', () => {
    expect(st(new Error('ENOENT: /home/dev/.cache/model'))).toEqual(['INTERNAL', 'internal error in the client-agent (logged)']);
    // the executor's own refusals of the agent (its token, its client id) are the operator's business, not the caller's
    expect(st(fromExecutor(status.PERMISSION_DENIED, "open.client_id must be the caller's own client id"))).toEqual([
      'INTERNAL',
      'internal error in the client-agent (logged)',
    ]);
  });
});
