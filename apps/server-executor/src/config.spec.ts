import { ConfigError } from '@tandem/service-kit';
import { advertisedAddress, DEFAULT_MAX_BATCH_TOKENS, loadConfig } from './config';

describe('executor configuration', () => {
  it('runs onnxruntime in a worker thread with a 4096-token batch budget by default', () => {
    const c = loadConfig({ MODEL_DIR: '/m' });
    expect(c.EXECUTOR_ENGINE).toBe('worker');
    expect(c.EXECUTOR_MAX_BATCH_TOKENS).toBe(DEFAULT_MAX_BATCH_TOKENS);
    expect(DEFAULT_MAX_BATCH_TOKENS).toBe(4096);
    expect(c.EXECUTOR_FUSED).toBe(true);
  });

  it('turns the fused whole-model session off, and refuses a value that is not a boolean', () => {
    expect(loadConfig({ MODEL_DIR: '/m', EXECUTOR_FUSED: 'false' }).EXECUTOR_FUSED).toBe(false);
    let err: unknown;
    try {
      loadConfig({ MODEL_DIR: '/m', EXECUTOR_FUSED: 'sometimes' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems.join('\n')).toMatch(/EXECUTOR_FUSED.*sometimes/);
  });

  it('accepts the inline engine and a token budget', () => {
    const c = loadConfig({ MODEL_DIR: '/m', EXECUTOR_ENGINE: 'inline', EXECUTOR_MAX_BATCH_TOKENS: '512' });
    expect(c.EXECUTOR_ENGINE).toBe('inline');
    expect(c.EXECUTOR_MAX_BATCH_TOKENS).toBe(512);
  });

  it('names the variable, the rule and the value of every bad setting at once', () => {
    let err: unknown;
    try {
      loadConfig({ MODEL_DIR: '/m', EXECUTOR_ENGINE: 'gpu', EXECUTOR_MAX_BATCH_TOKENS: '0' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const problems = (err as ConfigError).problems.join('\n');
    expect(problems).toMatch(/EXECUTOR_ENGINE.*must be one of worker, inline.*gpu/);
    expect(problems).toMatch(/EXECUTOR_MAX_BATCH_TOKENS.*must be an integer in 1\.\.1048576.*0/);
  });

  it('advertises EXECUTOR_ADVERTISE_ADDR, none for off, else a concrete listen host with the bound port', () => {
    expect(loadConfig({ MODEL_DIR: '/m' }).EXECUTOR_ADVERTISE_ADDR).toBeUndefined();
    expect(loadConfig({ MODEL_DIR: '/m', EXECUTOR_ADVERTISE_ADDR: 'exec-2.internal:50051' }).EXECUTOR_ADVERTISE_ADDR).toBe('exec-2.internal:50051');
    expect(advertisedAddress('exec-2.internal:50051', '0.0.0.0', 40000)).toBe('exec-2.internal:50051');
    expect(advertisedAddress('off', '127.0.0.1', 40000)).toBeUndefined();
    expect(advertisedAddress(undefined, '127.0.0.1', 40000)).toBe('127.0.0.1:40000');
    expect(advertisedAddress(undefined, '::1', 40000)).toBe('[::1]:40000');
    expect(advertisedAddress(undefined, '0.0.0.0', 40000)).toBeUndefined();
    expect(advertisedAddress(undefined, '::', 40000)).toBeUndefined();
  });
});
