import { existsSync } from 'node:fs';
import { Kvm } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import { sleep } from '@tandem/util';
import { startNatsServer } from '../src';

describe('startNatsServer', () => {
  it('starts a real server that delivers messages, and restarts it on the same port', async () => {
    const srv = await startNatsServer();
    try {
      const nc = await connect({ servers: srv.url, reconnectTimeWait: 50, maxReconnectAttempts: -1 });
      const sub = nc.subscribe('t.x', { max: 2 });
      const got: string[] = [];
      const done = (async () => {
        for await (const m of sub) got.push(m.string());
      })();
      nc.publish('t.x', 'one');
      await nc.flush();
      await srv.restart();
      // the client reconnects by itself and its subscription is re-established
      const until = Date.now() + 5000;
      while (got.length < 2 && Date.now() < until) {
        try {
          nc.publish('t.x', 'two');
          await nc.flush();
        } catch {
          /* reconnecting */
        }
        await sleep(100);
      }
      await done;
      expect(got).toEqual(['one', 'two']);
      await nc.close();
    } finally {
      await srv.stop();
    }
  });

  it('with jetstream: a key-value bucket survives a restart; stop removes the store', async () => {
    const srv = await startNatsServer({ jetstream: true });
    const dir = srv.storeDir;
    try {
      expect(dir && existsSync(dir)).toBe(true);
      let nc = await connect({ servers: srv.url });
      const kv = await new Kvm(nc).create('testkit-kv');
      await kv.put('k', 'v1');
      await nc.close();
      await srv.restart();
      nc = await connect({ servers: srv.url });
      const again = await new Kvm(nc).open('testkit-kv');
      expect((await again.get('k'))?.string()).toBe('v1');
      await nc.close();
    } finally {
      await srv.stop();
    }
    expect(dir && existsSync(dir)).toBe(false);
  });
});
