import { addressProblem, isWildcardHost, MAX_ADDRESS_CHARS } from '../src/address';

describe('addressProblem', () => {
  it.each(['127.0.0.1:50051', 'executor-2.tandem.svc.cluster.local:443', 'localhost:1', '[::1]:50051', '[fe80::1%eth0]:9', 'a_b:65535', 'host.:80'])(
    'accepts %s',
    (a) => expect(addressProblem(a)).toBeUndefined(),
  );

  it.each([
    ['', 'empty'],
    ['127.0.0.1', 'no port'],
    [':50051', 'no port'],
    ['host:0', 'port in 1..65535'],
    ['host:65536', 'port in 1..65535'],
    ['host:-1', 'port in 1..65535'],
    ['host:80a', 'port in 1..65535'],
    ['ho st:80', 'host name'],
    ['host/x:80', 'host name'],
    ['::1:80', 'host name'],
    ['[zz::1]:80', 'host name'],
    ['a..b:80', 'host name'],
    [`${'a'.repeat(64)}:80`, 'host name'],
    [`${'a.'.repeat(150)}x:80`, 'at most'],
  ])('refuses %j (%s)', (a, rule) => {
    expect(addressProblem(a)).toContain(rule);
  });

  it('bounds the length and names the length given', () => {
    const long = `${'a'.repeat(MAX_ADDRESS_CHARS)}:1`;
    expect(addressProblem(long)).toBe(`must be host:port of at most ${MAX_ADDRESS_CHARS} characters, given ${long.length}`);
  });
});

describe('isWildcardHost', () => {
  it('tells wildcards from concrete hosts', () => {
    expect(['', '0.0.0.0', '::', '[::]'].map(isWildcardHost)).toEqual([true, true, true, true]);
    expect(['127.0.0.1', 'localhost', '10.0.0.2', '::1'].map(isWildcardHost)).toEqual([false, false, false, false]);
  });
});
