/**
 * @tandem/protocol: the wire contract. Generated ts-proto code (proto/ → generated/,
 * committed, DO NOT EDIT) plus the hand-written helpers every service shares.
 */
export { DataType, Tensor } from './generated/tandem/tensor/v1/tensor';
export {
  // The agent API has a GeneratedToken of its own (tandem.agent.v1).
  GeneratedToken as ExecutorGeneratedToken,
  GetStatusRequest,
  GetStatusResponse,
  KvChunk,
  KvPut,
  KvTake,
  OpenSession,
  ProbeLinkRequest,
  ProbeLinkResponse,
  ServerGenerate,
  SessionOpened,
  SessionRequest,
  SessionResponse,
  Step,
  StepRefused,
  StepResult,
} from './generated/tandem/executor/v1/executor';
export type { ExecutorServiceServer } from './generated/tandem/executor/v1/executor';
// The executor service with tensor (de)serializers that copy each tensor once in all (wire-codec.ts).
export {
  DecodeProblem,
  decodeProblem,
  ExecutorServiceClient,
  ExecutorServiceService,
  GATHER_MIN_BYTES,
  GatherWriter,
  GRPC_BODY_OFFSET,
  PADDING_FIELD,
  gatherSerialize,
  safeDeserialize,
  safeService,
  viewDeserialize,
} from './wire-codec';
export { capStatus, cut, MAX_GIVEN_CHARS, MAX_STATUS_BYTES, quoted, renderShape } from './render';
export {
  ClassObservations,
  ClassPlacement,
  ClientObservations,
  ClientPlan,
  ExecutorAssignment,
  ExecutorSummary,
  ListPlansRequest,
  ListPlansResponse,
  PlannerServiceClient,
  PlannerServiceService,
  WatchPlansRequest,
  WatchPlansResponse,
} from './generated/tandem/planner/v1/planner';
export type { PlannerServiceServer } from './generated/tandem/planner/v1/planner';
export {
  AgentServiceClient,
  AgentServiceService,
  GeneratedToken,
  GenerateRequest,
  GenerateResponse,
  GenerationSummary,
  GetStatusRequest as AgentStatusRequest,
  GetStatusResponse as AgentStatusResponse,
  ClassPlacementStatus,
  TokenIds,
} from './generated/tandem/agent/v1/agent';
export type { AgentServiceServer } from './generated/tandem/agent/v1/agent';
export {
  ClientProfile,
  GenerationOutcome,
  LinkDirection,
  OutcomeStatus,
  ServerLoad,
  StageTiming,
  StepOverhead,
  StepQueueWaits,
} from './generated/tandem/telemetry/v1/telemetry';
export {
  HealthCheckRequest,
  HealthCheckResponse,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthClient,
  HealthService,
} from './generated/grpc/health/v1/health';
export {
  InferParameter,
  InferTensorContents,
  ModelInferRequest,
  ModelInferRequest_InferInputTensor,
  ModelInferRequest_InferRequestedOutputTensor,
  ModelInferResponse,
  ModelInferResponse_InferOutputTensor,
  ModelMetadataRequest,
  ModelMetadataResponse,
  ModelMetadataResponse_TensorMetadata,
  ModelReadyRequest,
  ModelReadyResponse,
  ServerLiveRequest,
  ServerLiveResponse,
  ServerMetadataRequest,
  ServerMetadataResponse,
  ServerReadyRequest,
  ServerReadyResponse,
} from './generated/inference/grpc_predict_v2';
export type { GRPCInferenceServiceServer } from './generated/inference/grpc_predict_v2';
// The Open Inference Protocol (KServe v2) service, its ModelInfer requests decoded safely (inference.ts).
export { GRPCInferenceServiceClient, GRPCInferenceServiceService, INFERENCE_SERVICE_NAME } from './inference';
export { firstNonFinite, fromWireTensor, TensorFormatError, toWireTensor } from './tensor';
export type { HostTensor } from './tensor';
export { ID_PATTERN, Subjects } from './subjects';
export { HealthReporter } from './health';
export { channelOptions, DEFAULT_KEEPALIVE, keepaliveOptions } from './channel-options';
export { addReflection, HEALTH_SERVICE_NAME, protoPackageDefinition, protoServiceNames } from './reflection';
export { RETRY_AFTER_KEY, retryAfterMsOf } from './retry-after';
export { agentStatus, DEFAULT_CALL_DEADLINE_MS, DEFAULT_GENERATE_DEADLINE_MS, executorStatus, generateVia, listPlans, listPlansPage, probeLink } from './calls';
export type { GenerationResult } from './calls';
export type { Keepalive } from './channel-options';
export { addressList, addressListProblem, addressProblem, isWildcardHost, MAX_ADDRESS_CHARS } from './address';
