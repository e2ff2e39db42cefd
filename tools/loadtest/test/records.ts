import type { RequestRecord } from '../src';

/** A record of request 0 of device 'd', class 'c': 4 prompt tokens, up to 3 new, an E2E SLO of 300 ms, sent at 0, OK with no token yet; with `p` on top. */
export const rec = (p: Partial<RequestRecord>): RequestRecord => ({
  index: 0,
  device: 'd',
  requestClass: 'c',
  promptTokens: 4,
  maxNewTokens: 3,
  slo: { e2eMs: 300 },
  sentMs: 0,
  lagMs: 0,
  status: 'OK',
  tokenMs: [],
  endMs: 0,
  ...p,
});
