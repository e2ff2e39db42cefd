/**
 * @tandem/model: the GPT-2-family model format (a manifest plus one ONNX file per stage), its
 * creation (synthetic presets, Hugging Face import), the stage runner shared by client and server,
 * and a one-process split pipeline for forward passes and greedy generation.
 */
export { PRESETS, presetConfig, validateConfig } from './config';
export type { ModelConfig, PresetName } from './config';
export { MODEL_FORMAT, modelIdOf, readManifest, validateManifest, stageCount, stageKvBytesPerToken, stageSlot } from './manifest';
export type { Manifest, ModelSource, StageInfo, StageKind, StageSlot } from './manifest';
export { createModel } from './create';
export type { CreateModelOptions } from './create';
export { importHfModel, readHfConfig } from './import-hf';
export type { ImportHfOptions } from './import-hf';
export type { ProgressFn } from './model-writer';
export { StageRunner, freeViews, lastPosition } from './runner';
export { PREFILL_FIT_DECAY, PREFILL_FIT_MIN_SAMPLES, PREFILL_FIT_MIN_SPREAD, StageStats } from './stage-stats';
export type { PrefillLine } from './stage-stats';
export { concatPositions, slicePositions } from './stage-state';
export type { Float32Tensor, StageState } from './stage-state';
export type { KvCache, RunRangeOptions, StageRunnerOptions } from './runner';
export { FUSED_IO, buildFusedGraph, fusedSessionConfig } from './fused-graph';
export { parsePlacement, formatPlacement } from './placement';
export { SplitPipeline, argmaxRow, greedyToken, sampledToken, tokenOfOutput } from './pipeline';
export type { GenerateOptions, SplitCaches, SplitPipelineOptions, StageObserver } from './pipeline';
export { encode, decode, EOT_ID, GPT2_VOCAB_SIZE } from './tokenizer';
export { ModelFormatError, StageInputError, ImportError, ModelOptionError, isModelInputError } from './errors';
export type { InputProblem, StageInputProblemKind } from './errors';
