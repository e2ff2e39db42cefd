import { totalmem } from 'node:os';
import { loadConfig } from './config';
import { CapacityError } from './errors';
import { defaultKvBudgetBytes, isAttentionStage, KvBudget, kvBytesPerToken } from './kv-budget';

describe('KV-cache budget', () => {
  it('knows which stages hold a cache and what a token costs there', () => {
    // embed, block.0.attn, block.0.mlp, block.1.attn, block.1.mlp, head
    expect([0, 1, 2, 3, 4, 5].map((s) => isAttentionStage(s, 6))).toEqual([false, true, false, true, false, false]);
    expect(kvBytesPerToken(768)).toBe(2 * 768 * 4);
  });

  it('reserves while it fits, refuses with a CapacityError naming the sizes, and gives back', () => {
    const b = new KvBudget(1000);
    b.reserve(600, 'step seq 1');
    expect(() => b.reserve(500, 'step seq 2')).toThrow(CapacityError);
    expect(() => b.reserve(500, 'step seq 2')).toThrow(
      'the KV cache must stay <= 1000 bytes (0.0 MiB, EXECUTOR_MAX_KV_BYTES); step seq 2 needs 500 bytes more with 600 in use',
    );
    expect(b.usedBytes).toBe(600);
    b.release(600);
    b.reserve(1000, 'generate');
    expect(b.hasRoom(1)).toBe(false);
  });

  it('defaults to a quarter of the machine memory (EXECUTOR_MAX_KV_BYTES=0)', () => {
    expect(loadConfig({ MODEL_DIR: '/m' }).EXECUTOR_MAX_KV_BYTES).toBe(0);
    expect(loadConfig({ MODEL_DIR: '/m', EXECUTOR_MAX_KV_BYTES: '1048576' }).EXECUTOR_MAX_KV_BYTES).toBe(1 << 20);
    expect(defaultKvBudgetBytes()).toBe(Math.floor(totalmem() / 4));
  });
});
