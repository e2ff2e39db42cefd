/** The client-agent's parts, for the launcher, tests and tools. */
export { agentEnv, loadConfig, parseStageList } from './config';
export type { AgentConfig } from './config';
export { AGENT_SERVICE_NAME, ClientAgent } from './client-agent';
export type { ClientAgentOptions } from './client-agent';
export { CONNECT_TIMEOUT_MS, EXECUTOR_IDLE_MS, MAX_EXECUTOR_CLIENTS } from './executor-pool';
export { LinkEmulator, LinkEstimator } from './link';
export { ExecutorLostError, generate, isSessionLost, RESUME_MARGIN_MS, segmentsOf } from './generation';
export type { GenerationDeps, GenerationStats, ResumeOptions } from './generation';
export { LocalStages } from './local-stages';
export { GenerateRefusedError, REFUSAL_MARGIN_MS, refusalHintOf, RefusedError, RemoteSession, StepRefusedError } from './remote-session';
export { ReplayRecording, ReplayMissError, ReplayFormatError, recordReplay } from './replay';
export type { ReplayHeader, ReplayPrompt, ReplayStageCost, RecordOptions } from './replay';
