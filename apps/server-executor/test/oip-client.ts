import * as grpc from '@grpc/grpc-js';
import {
  channelOptions,
  GRPCInferenceServiceClient,
  ModelInferRequest,
  type ModelInferResponse,
  type ModelInferResponse_InferOutputTensor,
  type ModelMetadataResponse,
  type ServerMetadataResponse,
} from '@tandem/protocol';

/** A ModelInferRequest with any field left out (ModelInferRequest.fromPartial fills in the defaults). */
type DeepPartial<T> = T extends Buffer | string | number | boolean | undefined
  ? T
  : T extends readonly (infer U)[]
    ? DeepPartial<U>[]
    : T extends object
      ? { [K in keyof T]?: DeepPartial<T[K]> }
      : T;
export type InferRequestInit = DeepPartial<ModelInferRequest>;

/** Promise-returning calls of the Open Inference Protocol service, each with a deadline (default 10 s). */
export class OipTestClient {
  readonly client: GRPCInferenceServiceClient;

  constructor(addr: string, credentials = grpc.credentials.createInsecure(), options: Partial<grpc.ClientOptions> = channelOptions(8 << 20)) {
    this.client = new GRPCInferenceServiceClient(addr, credentials, options);
  }

  private unary<Req, Res>(
    method: (req: Req, md: grpc.Metadata, opts: Partial<grpc.CallOptions>, cb: (e: grpc.ServiceError | null, r: Res) => void) => grpc.ClientUnaryCall,
    req: Req,
    deadlineMs: number,
  ): Promise<Res> {
    return new Promise((resolve, reject) =>
      method.call(this.client, req, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (e, r) => (e ? reject(e) : resolve(r))),
    );
  }

  async live(): Promise<boolean> {
    return (await this.unary(this.client.serverLive, {}, 10_000)).live;
  }
  async ready(): Promise<boolean> {
    return (await this.unary(this.client.serverReady, {}, 10_000)).ready;
  }
  serverMetadata(): Promise<ServerMetadataResponse> {
    return this.unary(this.client.serverMetadata, {}, 10_000);
  }
  async modelReady(name: string, version = ''): Promise<boolean> {
    return (await this.unary(this.client.modelReady, { name, version }, 10_000)).ready;
  }
  modelMetadata(name: string, version = ''): Promise<ModelMetadataResponse> {
    return this.unary(this.client.modelMetadata, { name, version }, 10_000);
  }
  infer(req: InferRequestInit, deadlineMs = 30_000): Promise<ModelInferResponse> {
    // fromPartial's parameter type is checked against the literal it is given; any partial request is fine here.
    return this.unary(this.client.modelInfer, ModelInferRequest.fromPartial(req as ModelInferRequest), deadlineMs);
  }
  /** The call's error (the test expects a refusal). */
  async refusal(call: Promise<unknown>): Promise<grpc.ServiceError> {
    try {
      await call;
    } catch (err) {
      return err as grpc.ServiceError;
    }
    throw new Error('expected the call to be refused');
  }
  close(): void {
    this.client.close();
  }
}

/** The values of output `name` of a response, raw or typed, as a typed array of its datatype. */
export function outputValues(r: ModelInferResponse, name: string): { tensor: ModelInferResponse_InferOutputTensor; data: Float32Array | BigInt64Array } {
  const i = r.outputs.findIndex((o) => o.name === name);
  if (i < 0) throw new Error(`no output '${name}' in the response (${r.outputs.map((o) => o.name).join(', ')})`);
  const tensor = r.outputs[i];
  if (r.rawOutputContents.length > 0) {
    const raw = r.rawOutputContents[i];
    const copy = new Uint8Array(raw).buffer;
    return { tensor, data: tensor.datatype === 'INT64' ? new BigInt64Array(copy) : new Float32Array(copy) };
  }
  const c = tensor.contents;
  if (!c) throw new Error(`output '${name}' has neither raw nor typed contents`);
  return { tensor, data: tensor.datatype === 'INT64' ? BigInt64Array.from(c.int64Contents, BigInt) : Float32Array.from(c.fp32Contents) };
}

/** Raw little-endian bytes of int64 values (raw_input_contents of token ids). */
export const int64Raw = (values: readonly number[]): Buffer => Buffer.from(BigInt64Array.from(values, BigInt).buffer);

/** Raw bytes of float32 values. */
export const fp32Raw = (values: Float32Array): Buffer => Buffer.from(values.buffer, values.byteOffset, values.byteLength);

/** The bytes of a float32 array, for bit-for-bit comparison. */
export const bitsOf = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
