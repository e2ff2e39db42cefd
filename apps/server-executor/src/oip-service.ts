import { randomUUID } from 'node:crypto';
import { status, type ServerUnaryCall } from '@grpc/grpc-js';
import { tokenOfOutput } from '@tandem/model';
import {
  InferTensorContents,
  type GRPCInferenceServiceServer,
  type HostTensor,
  type ModelInferRequest,
  type ModelInferResponse,
  type ModelInferResponse_InferOutputTensor,
} from '@tandem/protocol';
import type { EdgeHandlers, Logger, TokenTable } from '@tandem/service-kit';
import type { Admission, AdmittedWork } from './admission';
import type { SessionCache, StageEngine } from './engine';
import { NotReadyError, SessionClosedError } from './errors';
import { kvBytesOf, type KvBudget } from './kv-budget';
import { OIP_MODEL_VERSION, type OipModels, type OipTensorSpec, type ValidInfer } from './oip-models';
import type { StageScheduler } from './scheduler';
import type { ClientTokenRates } from './token-rate';

/** ServerMetadata.name. */
export const OIP_SERVER_NAME = 'tandem-executor';
/** ServerMetadata.version: the executor's version (its package.json's, checked by a test). */
export const EXECUTOR_VERSION = '0.1.0';
/**
 * The client id of Open Inference Protocol calls without a bearer token (no AUTH_TOKENS_FILE):
 * such calls count as one client for EXECUTOR_MAX_SESSIONS_PER_CLIENT and the token rate. With
 * tokens, a call's client id is its token's identity.
 */
export const OIP_ANONYMOUS_CLIENT = 'oip';

/** Whether the executor answers (live) and takes inference (ready), and why not when it does not. */
export interface OipServerState {
  readonly live: boolean;
  readonly ready: boolean;
  /** Why inference is refused now (when not ready). */
  readonly notReadyReason: string;
}

export interface OipServiceOptions {
  readonly engine: StageEngine;
  readonly scheduler: StageScheduler;
  readonly models: OipModels;
  /** The executor's admission: a call is admitted like a session while it runs (sessions, per-client limit, draining). */
  readonly admission: Pick<Admission<AdmittedWork>, 'admit' | 'leave'>;
  readonly kv: KvBudget;
  readonly rates?: ClientTokenRates;
  /** The executor's bearer tokens (the caller's identity is its client id); undefined: none. */
  readonly tokens?: TokenTable;
  readonly state: () => OipServerState;
  readonly log: Logger;
}

/**
 * One ModelInfer call while it runs, as the executor's admission sees it: each of its rows is a
 * scheduler step of its own (the row's id, a fresh cache), so rows batch with each other and
 * with the sessions' steps. `close` cancels the rows still queued or running (the call was
 * cancelled, or the executor stops).
 */
class InferCall implements AdmittedWork {
  readonly rowIds: readonly string[];
  private closedBy: SessionClosedError | undefined;

  constructor(
    readonly clientId: string,
    rows: number,
    private readonly scheduler: StageScheduler,
  ) {
    const id = randomUUID();
    this.rowIds = Array.from({ length: rows }, (_, i) => `oip-${id}-${i}`);
  }

  /** Why the call was closed, if it was. */
  get closed(): SessionClosedError | undefined {
    return this.closedBy;
  }

  close(reason: string, code: status): void {
    if (this.closedBy) return;
    this.closedBy = new SessionClosedError(reason, code);
    for (const id of this.rowIds) void this.scheduler.cancelSession(id, this.closedBy);
  }
}

/**
 * The Open Inference Protocol (KServe v2) on the executor: `inference.GRPCInferenceService` on
 * the executor's own gRPC server (its TLS, tokens and error edge). ModelInfer runs through the
 * executor's scheduler, so its rows are batched with every other step, off the event loop with
 * the worker engine, and admitted under the same limits as a session (EXECUTOR_MAX_SESSIONS and
 * per client, the KV-cache budget, the per-client token rate; refused while warming up or
 * draining). Every call is stateless: each row runs its whole input from position 0 on a fresh
 * cache, freed when the call ends.
 */
export class OipService {
  private readonly log: Logger;

  constructor(private readonly opts: OipServiceOptions) {
    this.log = opts.log.child({ component: 'oip' });
  }

  /** The service's handlers, for serveWithEdge (errors are answered by the executor's status map). */
  handlers(): EdgeHandlers<GRPCInferenceServiceServer> {
    return {
      serverLive: (_call, cb) => cb(null, { live: this.opts.state().live }),
      serverReady: (_call, cb) => cb(null, { ready: this.opts.state().ready }),
      serverMetadata: (_call, cb) => cb(null, { name: OIP_SERVER_NAME, version: EXECUTOR_VERSION, extensions: [] }),
      modelReady: (call, cb) => {
        this.opts.models.resolve(call.request.name, call.request.version, 'name', 'version');
        cb(null, { ready: this.opts.state().ready });
      },
      modelMetadata: (call, cb) => {
        cb(null, this.opts.models.metadata(this.opts.models.resolve(call.request.name, call.request.version, 'name', 'version')));
      },
      modelInfer: async (call, cb) => {
        cb(null, await this.infer(call));
      },
    };
  }

  /**
   * Validates, admits and runs one ModelInfer call.
   * @throws NotReadyError (UNAVAILABLE) while not ready; what OipModels.validate and the
   *   admission throw; SessionClosedError when the call was cancelled or the executor stopped.
   */
  private async infer(call: ServerUnaryCall<ModelInferRequest, ModelInferResponse>): Promise<ModelInferResponse> {
    const state = this.opts.state();
    if (!state.ready) throw new NotReadyError(state.notReadyReason);
    const v = this.opts.models.validate(call.request);
    const clientId = this.opts.tokens ? this.opts.tokens.authenticate(call.metadata) : OIP_ANONYMOUS_CLIENT;
    const work = new InferCall(clientId, v.rows.length, this.opts.scheduler);
    this.opts.admission.admit(work, call.metadata);
    let reserved = 0;
    const onCancelled = (): void => work.close('the call was cancelled or its deadline passed', status.CANCELLED);
    call.on('cancelled', onCancelled);
    if (call.cancelled) onCancelled();
    try {
      const { engine, kv } = this.opts;
      const what = `ModelInfer of ${v.rows.length} row(s) of ${v.tokens} tokens`;
      this.opts.rates?.step(clientId, v.rows.length * v.tokens, what);
      const bytes = v.rows.length * kvBytesOf(engine.stageCount, engine.nEmbd, v.model.begin, v.model.end, v.tokens);
      kv.reserve(bytes, what);
      reserved = bytes;
      this.log.debug({ model: v.model.name, rows: v.rows.length, tokens: v.tokens, clientId, raw: v.raw }, 'ModelInfer');
      const outputs = await this.run(work, v);
      return this.response(v, outputs);
    } finally {
      call.off('cancelled', onCancelled);
      this.opts.kv.release(reserved);
      this.opts.admission.leave(work);
    }
  }

  /**
   * Submits every row as a scheduler step over the model's stages (the whole model: the head on
   * the last position only, and sampled in the engine when `next_token` is all that is asked,
   * so the logits stay there) and waits for all of them; caches are freed once no row runs.
   * @throws the first row's error, or the call's SessionClosedError when it was closed.
   */
  private async run(work: InferCall, v: ValidInfer): Promise<HostTensor[]> {
    const { engine, scheduler } = this.opts;
    const caches: SessionCache[] = v.rows.map(() => engine.newCache());
    const sample = v.model.whole && v.outputs.every((o) => o.name === 'next_token');
    try {
      const settled = await Promise.allSettled(
        v.rows.map((row, i) => scheduler.submit(work.rowIds[i], v.model.begin, v.model.end, row, caches[i], { lastRowOnly: v.model.whole, sample })),
      );
      if (work.closed) throw work.closed;
      const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
      if (failed) throw failed.reason;
      return settled.map((s) => (s as PromiseFulfilledResult<{ tensor: HostTensor }>).value.tensor);
    } finally {
      // Every row has left the scheduler (each settled), so no stage call uses these caches.
      for (const c of caches) engine.releaseCache(c);
    }
  }

  /** The response: the outputs asked for, as raw contents when the request sent raw ones. */
  private response(v: ValidInfer, rowOutputs: readonly HostTensor[]): ModelInferResponse {
    const vocab = this.opts.engine.vocabSize;
    const rows = rowOutputs.length;
    const tensors = v.outputs.map((spec): { spec: OipTensorSpec; shape: number[]; data: BigInt64Array | Float32Array } => {
      if (spec.name === 'next_token') {
        const data = BigInt64Array.from(rowOutputs, (t) => BigInt(tokenOfOutput(t, vocab)));
        return { spec, shape: [rows, 1], data };
      }
      // The whole model's logits are the last position's (the head ran on it alone); a range's, every position's.
      if (v.model.whole) return { spec, shape: [rows, vocab], data: concat(rowOutputs.map((o) => lastRow(o.data as Float32Array, vocab))) };
      const [, t, width] = rowOutputs[0].shape;
      return { spec, shape: [rows, t, width], data: concat(rowOutputs.map((o) => o.data as Float32Array)) };
    });
    const outputs: ModelInferResponse_InferOutputTensor[] = tensors.map(({ spec, shape, data }) => ({
      name: spec.name,
      datatype: spec.datatype,
      shape,
      parameters: {},
      contents: v.raw
        ? undefined
        : InferTensorContents.fromPartial(data instanceof BigInt64Array ? { int64Contents: Array.from(data, Number) } : { fp32Contents: Array.from(data) }),
    }));
    return {
      modelName: v.model.name,
      modelVersion: OIP_MODEL_VERSION,
      id: v.id,
      parameters: {},
      outputs,
      rawOutputContents: v.raw ? tensors.map(({ data }) => Buffer.from(data.buffer, data.byteOffset, data.byteLength)) : [],
    };
  }
}

/** The last `width` values of `data` (a view). */
function lastRow(data: Float32Array, width: number): Float32Array {
  return data.subarray(data.length - width);
}

/** The arrays one after another, in one new array (the array itself when there is one). */
function concat(parts: readonly Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
