import * as grpc from '@grpc/grpc-js';
import { ClientProfile, ServerLoad, Subjects, type ClassPlacement, type WatchPlansResponse } from '@tandem/protocol';
import { capturingLogger, clientProfile, eventually, serverLoad, stageTimes } from '@tandem/testkit';
import { NO_PLAN_REASONS } from '../src';
import { PlanClients, startLivePlanner, type LivePlanner } from './fixtures';

// WatchPlans while the planner cannot plan yet (no profile, no executor load), over a real
// nats-server and a real gRPC port: the client is told why, and the plan follows the load.

describe('WatchPlans before the planner can plan', () => {
  let live: LivePlanner;
  const clients = new PlanClients();
  const captured = capturingLogger('info');

  beforeAll(async () => {
    // A small message limit, to see that the server applies the services' channel options.
    live = await startLivePlanner({ log: captured.log, maxMessageBytes: 4096 });
  });

  afterAll(async () => {
    clients.close();
    await live?.stop();
  });

  const watch = (clientId: string): WatchPlansResponse[] => clients.watch(live.port, clientId);

  it('says no profile, then no executor load (once in the log too), then sends the plan once an executor reports', async () => {
    const got = watch('waiting');
    await eventually(() => got.length >= 1, { what: 'the first message' });
    expect(got[0]).toEqual({ plan: undefined, noPlanReason: NO_PLAN_REASONS.noProfile });

    live.nc.publish(Subjects.clientProfile('waiting'), ClientProfile.encode(clientProfile({ clientId: 'waiting', stages: stageTimes([1, 5, 100]) })).finish());
    await eventually(() => got.length >= 2, { what: 'the reason after the profile' });
    expect(got[1]).toEqual({ plan: undefined, noPlanReason: NO_PLAN_REASONS.noLoad });
    expect(live.server.noPlanReason('waiting')).toBe(NO_PLAN_REASONS.noLoad);
    const warned = (): number => captured.lines().filter((l) => l.level === 40 && l.msg.includes('no executor has reported its load yet')).length;
    expect(warned()).toBe(1);

    // A second client waits for the same reason: told on its stream, not logged again.
    const other = watch('waiting-too');
    live.nc.publish(
      Subjects.clientProfile('waiting-too'),
      ClientProfile.encode(clientProfile({ clientId: 'waiting-too', stages: stageTimes([1, 5, 100]) })).finish(),
    );
    await eventually(() => other.some((m) => m.noPlanReason === NO_PLAN_REASONS.noLoad), { what: "the second client's reason" });
    expect(warned()).toBe(1);

    live.nc.publish(Subjects.serverLoad('srv'), ServerLoad.encode(serverLoad()).finish());
    await eventually(() => got.some((m) => m.plan !== undefined), { what: 'the plan after the load' });
    const planned = got.find((m) => m.plan !== undefined)!;
    expect(planned.noPlanReason).toBe('');
    expect(planned.plan?.classes[0].placement).toMatch(/^[CS]{3}$/);
    expect(live.server.noPlanReason('waiting')).toBe('');

    // A stream opened now gets the plan at once, with no reason.
    const late = watch('waiting');
    await eventually(() => late.length >= 1, { what: 'the plan on a new stream' });
    expect(late[0].plan?.epoch).toBe(planned.plan?.epoch);
    expect(late[0].noPlanReason).toBe('');
  });

  // A device too slow for any stage: every plan is all-server, whatever the link.
  const SLOW_DEVICE = stageTimes([1000, 1000, 1000]);

  it('sends a plan again when a re-plan keeps its placements but moves a prediction by more than 10 %, and not for a smaller move', async () => {
    const got = watch('pred');
    const profile = (latencyMs: number): void =>
      live.nc.publish(
        Subjects.clientProfile('pred'),
        ClientProfile.encode(
          clientProfile({ clientId: 'pred', stages: SLOW_DEVICE, uplink: { latencyMs, bytesPerMs: 1e4 }, downlink: { latencyMs, bytesPerMs: 1e4 } }),
        ).finish(),
      );
    const held = (): ClassPlacement => live.server.plans().find((p) => p.clientId === 'pred')!.classes[0];
    profile(20);
    live.nc.publish(Subjects.serverLoad('srv'), ServerLoad.encode(serverLoad()).finish());
    await eventually(() => got.some((m) => m.plan !== undefined), { what: 'the first plan' });
    const first = got.find((m) => m.plan !== undefined)!.plan!;
    const sent = (): number => got.filter((m) => m.plan !== undefined).length;

    // 5 % more latency: re-planned (above the 2 % re-plan threshold), same placement, the TTFT
    // predicted a little later: refreshed on the planner, not sent.
    profile(21);
    await eventually(() => held().predictedTtftMs > first.classes[0].predictedTtftMs, { what: 'the refreshed prediction' });
    expect(held().placement).toBe(first.classes[0].placement);
    expect(held().predictedTtftMs).toBeLessThan(first.classes[0].predictedTtftMs * 1.1);
    expect(sent()).toBe(1);

    // A quarter of the latency: the same placement, its predictions sent with a new epoch.
    profile(5);
    await eventually(() => sent() === 2, { what: 'the plan sent again' });
    const again = got.filter((m) => m.plan !== undefined)[1].plan!;
    expect(again.classes.map((c) => c.placement)).toEqual(first.classes.map((c) => c.placement));
    expect(again.epoch).toBeGreaterThan(first.epoch);
    expect(again.classes[0].predictedTtftMs).toBeLessThan(first.classes[0].predictedTtftMs * 0.9);
    expect(again.classes[0].predictedTtftMs).toBe(held().predictedTtftMs);
  });

  it('refuses a request over its message size limit with RESOURCE_EXHAUSTED (the channel options every service uses)', async () => {
    const err = await new Promise<grpc.ServiceError>((resolve) => {
      const call = clients.planClient(live.port).watchPlans({ clientId: 'x'.repeat(5000) });
      call.on('data', () => undefined);
      call.on('error', resolve);
    });
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(live.server.watchedClients).not.toContain('x'.repeat(5000));
  });
});
