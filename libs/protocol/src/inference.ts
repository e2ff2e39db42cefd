import { makeGenericClientConstructor, type ChannelCredentials, type ClientOptions } from '@grpc/grpc-js';
import {
  GRPCInferenceServiceService as GeneratedInferenceService,
  ModelInferRequest,
  type GRPCInferenceServiceClient as GeneratedInferenceClient,
} from './generated/inference/grpc_predict_v2';
import { safeDeserialize } from './wire-codec';

/**
 * The Open Inference Protocol (KServe v2) service `inference.GRPCInferenceService` as Tandem
 * serves and calls it: the generated definition with a ModelInfer request deserializer that never
 * throws (safeDeserialize): an int64 beyond ±(2^53-1) (a shape dimension, an int64_contents
 * value) is answered INVALID_ARGUMENT naming its field by the proto's name
 * (`inputs[0].contents.int64_contents[3]`), not grpc-js's bare INTERNAL.
 */
export type GRPCInferenceServiceService = typeof GeneratedInferenceService;
export const GRPCInferenceServiceService: GRPCInferenceServiceService = {
  ...GeneratedInferenceService,
  modelInfer: {
    ...GeneratedInferenceService.modelInfer,
    requestDeserialize: safeDeserialize(ModelInferRequest, 'ModelInferRequest', { protoFieldNames: true }),
  },
};

/** A client of {@link GRPCInferenceServiceService} (the generated client interface). */
export type GRPCInferenceServiceClient = GeneratedInferenceClient;
/** The Open Inference Protocol's gRPC service name (KServe v2). */
export const INFERENCE_SERVICE_NAME = 'inference.GRPCInferenceService';

export const GRPCInferenceServiceClient = makeGenericClientConstructor(GRPCInferenceServiceService, INFERENCE_SERVICE_NAME) as unknown as {
  new (address: string, credentials: ChannelCredentials, options?: Partial<ClientOptions>): GRPCInferenceServiceClient;
  service: GRPCInferenceServiceService;
  serviceName: string;
};
