import * as grpc from '@grpc/grpc-js';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { PlannerServiceClient, type ListPlansResponse, type WatchPlansResponse } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { PLAN_SETTINGS, PLANNER_SETTINGS, startNatsServer, type NatsServerHandle } from '@tandem/testkit';
import { PlanMaker, PlannerServer, type PlanMakerOptions, type PlannerServerOptions } from '../src';

// What the planner's tests plan with: the stages of their model, their request class and the
// PlanMaker settings they share. The telemetry they send is @tandem/testkit's (clientProfile,
// serverLoad, generationOutcome).

/**
 * The hand-checkable model of the planner's tests: three stages, each moving 8 (the token ids)
 * or 256 bytes a token into it.
 */
export const THREE_STAGES = [
  { name: 'embed', inBytesPerToken: 8 },
  { name: 'block', inBytesPerToken: 256 },
  { name: 'head', inBytesPerToken: 256 },
];

/** A two-layer model cut at every sub-layer: six stages. */
export const SIX_STAGES = ['embed', 'block.0.attn', 'block.0.mlp', 'block.1.attn', 'block.1.mlp', 'head'].map((name, i) => ({
  name,
  inBytesPerToken: i === 0 ? 8 : 256,
}));

/** The hand-checkable class: 10-token prompts, one new token, an SLA of 100 ms. */
export const SHORT_CLASS = { name: 'short', maxPromptTokens: 10, expectedNewTokens: 1, slaMs: 100 };

/** A DP planner of SHORT_CLASS on THREE_STAGES (hysteresis 5 %, SLA margin 0.9, 0.5 ms resolution, utilisation up to 0.9), with `over` on top. */
export function makerOptions(over: Partial<PlanMakerOptions> = {}): PlanMakerOptions {
  return {
    stages: THREE_STAGES,
    classes: [SHORT_CLASS],
    ...PLAN_SETTINGS,
    ...over,
  };
}

/**
 * A silent planner of model 'm' on 127.0.0.1 port 0 planning with makerOptions(): clients kept
 * 60 s, no debounce, work minimised at any load, its NATS URL one that answers nothing; with
 * `over` on top.
 */
export function plannerOptions(over: Partial<PlannerServerOptions> = {}): PlannerServerOptions {
  return {
    maker: new PlanMaker(makerOptions()),
    log: createLogger({ name: 'test', level: 'silent' }),
    ...PLANNER_SETTINGS,
    natsUrl: 'nats://127.0.0.1:1',
    modelId: 'm',
    ...over,
  };
}

/** A started planner on a nats-server of its own, and the test's connection to that nats-server. */
export interface LivePlanner {
  readonly nats: NatsServerHandle;
  readonly nc: NatsConnection;
  readonly server: PlannerServer;
  /** Its gRPC port, and 127.0.0.1:port. */
  readonly port: number;
  readonly addr: string;
  /** Closes the connection, stops the planner, then nats-server. */
  stop(): Promise<void>;
}

/** Starts nats-server, a planner of plannerOptions() on it with a 5 ms debounce and `over` on top, and connects to nats-server. */
export async function startLivePlanner(over: Partial<PlannerServerOptions> = {}): Promise<LivePlanner> {
  const nats = await startNatsServer();
  let server: PlannerServer | undefined;
  let nc: NatsConnection | undefined;
  const stop = async (): Promise<void> => {
    await nc?.close();
    await server?.stop();
    await nats.stop();
  };
  try {
    server = new PlannerServer(plannerOptions({ natsUrl: nats.url, debounceMs: 5, ...over }));
    const { port } = await server.start();
    nc = await connect({ servers: nats.url });
    return { nats, nc, server, port, addr: `127.0.0.1:${port}`, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * gRPC clients of planners on 127.0.0.1 and the WatchPlans streams opened with them, all closed
 * by close() (a test's afterEach).
 */
export class PlanClients {
  private readonly clients: grpc.Client[] = [];
  private readonly streams: grpc.ClientReadableStream<WatchPlansResponse>[] = [];

  /** `c`, closed with the others. */
  add<C extends grpc.Client>(c: C): C {
    this.clients.push(c);
    return c;
  }

  /** A client of the planner on `port`. */
  planClient(port: number): PlannerServiceClient {
    return this.add(new PlannerServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure()));
  }

  /** The messages of a WatchPlans stream of `clientId` on the planner on `port`, as they come. */
  watch(port: number, clientId: string): WatchPlansResponse[] {
    const got: WatchPlansResponse[] = [];
    const call = this.planClient(port).watchPlans({ clientId });
    this.streams.push(call);
    call.on('data', (m: WatchPlansResponse) => got.push(m));
    call.on('error', () => undefined);
    return got;
  }

  /** ListPlans of the planner on `port`. */
  listPlans(port: number, pageToken = '', pageSize = 0): Promise<ListPlansResponse> {
    return new Promise((resolve, reject) => this.planClient(port).listPlans({ pageSize, pageToken }, (err, res) => (err ? reject(err) : resolve(res!))));
  }

  /** Cancels the streams, then closes the clients. */
  close(): void {
    for (const s of this.streams.splice(0)) s.cancel();
    for (const c of this.clients.splice(0)) c.close();
  }
}
