import type { HostTensor } from '@tandem/protocol';
import type { SessionCache, StageEngine, StageKv } from '../src';

/**
 * A StageEngine that forwards every call to a real one: tests subclass it to count or time the
 * calls the executor makes, and override only those.
 */
export class DelegatingEngine implements StageEngine {
  constructor(readonly inner: StageEngine) {}
  get modelId(): string {
    return this.inner.modelId;
  }
  get stageCount(): number {
    return this.inner.stageCount;
  }
  get nEmbd(): number {
    return this.inner.nEmbd;
  }
  get nHead(): number {
    return this.inner.nHead;
  }
  get vocabSize(): number {
    return this.inner.vocabSize;
  }
  get nPositions(): number {
    return this.inner.nPositions;
  }
  get computesOnEventLoop(): boolean | undefined {
    return this.inner.computesOnEventLoop;
  }
  get failed(): Promise<Error> | undefined {
    return this.inner.failed;
  }
  stageKind(s: number): ReturnType<StageEngine['stageKind']> {
    return this.inner.stageKind(s);
  }
  newCache(): SessionCache {
    return this.inner.newCache();
  }
  releaseCache(c: SessionCache): void {
    this.inner.releaseCache(c);
  }
  runBatch(stage: number, inputs: readonly HostTensor[], caches: readonly SessionCache[], sample?: readonly boolean[]): Promise<HostTensor[]> {
    return this.inner.runBatch(stage, inputs, caches, sample);
  }
  hasFusedRange(begin: number, end: number): boolean {
    return this.inner.hasFusedRange?.(begin, end) ?? false;
  }
  runRange(begin: number, end: number, input: HostTensor, cache: SessionCache, lastRowOnly: boolean, sample?: boolean): Promise<HostTensor> {
    if (!this.inner.runRange) return Promise.reject(new Error('the wrapped engine has no fused ranges'));
    return this.inner.runRange(begin, end, input, cache, lastRowOnly, sample);
  }
  runSteps(begin: number, end: number, inputs: readonly HostTensor[], caches: readonly SessionCache[], sample?: readonly boolean[]): Promise<HostTensor[]> {
    if (!this.inner.runSteps) return Promise.reject(new Error('the wrapped engine has no decode rounds'));
    return this.inner.runSteps(begin, end, inputs, caches, sample);
  }
  putState(stage: number, cache: SessionCache, tokens: number, kv: StageKv | undefined): Promise<void> {
    if (!this.inner.putState) return Promise.reject(new Error('the wrapped engine cannot take handed-over state'));
    return this.inner.putState(stage, cache, tokens, kv);
  }
  takeState(stage: number, cache: SessionCache): Promise<StageKv | undefined> {
    if (!this.inner.takeState) return Promise.reject(new Error('the wrapped engine cannot hand state over'));
    return this.inner.takeState(stage, cache);
  }
  warmup(): Promise<void> {
    return this.inner.warmup();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
