import { createConnection, createServer, type Server, type Socket } from 'node:net';

/** One direction of a proxied connection: chunks wait here until their time to be written. */
class Direction {
  private readonly queue: { at: number; chunk: Buffer }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private ended = false;

  constructor(
    private readonly to: Socket,
    private readonly delayMs: () => number,
  ) {}

  /** Forwards `chunk` after the current delay, never ahead of a chunk that came before it. */
  push(chunk: Buffer): void {
    const last = this.queue.length > 0 ? this.queue[this.queue.length - 1].at : 0;
    const at = Math.max(performance.now() + this.delayMs(), last);
    if (this.queue.length === 0 && at <= performance.now()) {
      if (!this.to.destroyed) this.to.write(chunk);
      return;
    }
    this.queue.push({ at, chunk });
    this.pump();
  }

  /** The sender half-closed: half-close the receiver once every chunk before it went out. */
  end(): void {
    this.ended = true;
    this.pump();
  }

  private pump(): void {
    if (this.timer) return;
    const now = performance.now();
    while (this.queue.length > 0 && this.queue[0].at <= now) {
      const { chunk } = this.queue[0];
      this.queue.shift();
      if (!this.to.destroyed) this.to.write(chunk);
    }
    if (this.queue.length > 0) {
      this.timer = setTimeout(
        () => {
          this.timer = undefined;
          this.pump();
        },
        Math.max(1, Math.ceil(this.queue[0].at - now)),
      );
      return;
    }
    if (this.ended && !this.to.destroyed) this.to.end();
  }

  /** Drops what is queued (a blackhole loses what was on the wire). */
  drop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.queue.length = 0;
  }
}

/** One client connection and its connection to the target. */
interface Pair {
  readonly client: Socket;
  readonly target: Socket;
  readonly up: Direction;
  readonly down: Direction;
  blackholed: boolean;
}

/**
 * A TCP proxy on 127.0.0.1 for fault tests: forwards every connection to `target`, and can
 * delay each chunk (a slower link, from the moment it is set) or blackhole the open
 * connections (nothing more is forwarded either way, and neither socket is closed: no FIN,
 * no RST, as when a path dies in the network).
 */
export class TcpProxy {
  private readonly pairs = new Set<Pair>();
  private delay = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  /** Listens on 127.0.0.1:`port` (0: a free one) and forwards to `target` (host:port). */
  static async start(target: string, port = 0): Promise<TcpProxy> {
    const i = target.lastIndexOf(':');
    const host = target.slice(0, i);
    const targetPort = Number(target.slice(i + 1));
    let proxy: TcpProxy | undefined;
    const server = createServer({ allowHalfOpen: true }, (client) => {
      if (proxy) proxy.accept(client, host, targetPort);
      else client.destroy();
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    const addr = server.address();
    proxy = new TcpProxy(server, typeof addr === 'object' && addr ? addr.port : port);
    return proxy;
  }

  /** host:port of the proxy. */
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Open connections (blackholed ones included). */
  get connections(): number {
    return this.pairs.size;
  }

  /** One-way delay added to every chunk in both directions from now on, ms (0: none); order is kept. */
  setDelayMs(ms: number): void {
    this.delay = ms;
  }

  /**
   * Stops forwarding on every open connection, both ways, and closes nothing: whatever the
   * peers send stays unread (their writes back up as on a dead path) and what was queued is
   * dropped. Connections accepted later are forwarded as usual (a path lost by a NAT or a
   * load balancer, not by the peers).
   */
  blackhole(): void {
    for (const p of this.pairs) {
      p.blackholed = true;
      p.up.drop();
      p.down.drop();
      p.client.pause();
      p.target.pause();
    }
  }

  /** Closes the listener and destroys every connection. */
  async close(): Promise<void> {
    for (const p of this.pairs) {
      p.up.drop();
      p.down.drop();
      p.client.destroy();
      p.target.destroy();
    }
    this.pairs.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket, host: string, port: number): void {
    const target = createConnection({ host, port, allowHalfOpen: true });
    client.setNoDelay(true);
    target.setNoDelay(true);
    const pair: Pair = { client, target, up: new Direction(target, () => this.delay), down: new Direction(client, () => this.delay), blackholed: false };
    this.pairs.add(pair);
    const wire = (from: Socket, to: Socket, dir: Direction): void => {
      from.on('data', (chunk: Buffer) => {
        if (!pair.blackholed) dir.push(chunk);
      });
      // A half-close passes on after the chunks before it; an error resets the other side too.
      // Blackholed, nothing passes, not even these.
      from.on('end', () => {
        if (!pair.blackholed) dir.end();
      });
      from.on('error', () => {
        if (!pair.blackholed) to.destroy();
      });
      from.on('close', () => {
        if (client.destroyed && target.destroyed) this.pairs.delete(pair);
      });
    };
    wire(client, target, pair.up);
    wire(target, client, pair.down);
  }
}
