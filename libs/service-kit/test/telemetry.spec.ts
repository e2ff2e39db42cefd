import { connect } from '@nats-io/transport-node';
import { startNatsServer, type NatsServerHandle } from '@tandem/testkit';
import { createLogger, startTelemetry } from '../src';

const log = createLogger({ name: 'test', level: 'silent' });

describe('startTelemetry', () => {
  it('publishes nothing, and builds no payload, without a NATS URL', () => {
    const payload = jest.fn(() => new Uint8Array([1]));
    expect(startTelemetry({ telemetryIntervalMs: 10 }, { name: 'svc-1', subject: 'test.telemetry', payload, log })).toBeUndefined();
    expect(payload).not.toHaveBeenCalled();
  });

  describe('with a NATS server', () => {
    let nats: NatsServerHandle;
    beforeAll(async () => {
      nats = await startNatsServer();
    });
    afterAll(() => nats.stop());

    it('publishes the payload on the subject once connected, then every interval', async () => {
      const nc = await connect({ servers: nats.url });
      const sub = nc.subscribe('test.telemetry', { max: 3 });
      await nc.flush();
      let n = 0;
      const publisher = startTelemetry(
        { natsUrl: nats.url, telemetryIntervalMs: 50 },
        { name: 'svc-1', subject: 'test.telemetry', payload: () => new Uint8Array([++n]), log },
      );
      expect(publisher).toBeDefined();
      try {
        const seen: number[] = [];
        for await (const m of sub) seen.push(m.data[0]);
        expect(seen).toEqual([1, 2, 3]);
      } finally {
        await publisher?.stop();
        await nc.close();
      }
    });
  });
});
