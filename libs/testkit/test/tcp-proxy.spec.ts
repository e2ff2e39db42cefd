import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { sleep } from '@tandem/util';
import { eventually, TcpProxy } from '../src';

/** An echo server on 127.0.0.1 that records how each of its connections ended. */
async function echoServer(): Promise<{ server: Server; address: string; ends: string[]; close: () => Promise<void> }> {
  const ends: string[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('data', (b) => s.write(b));
    s.on('end', () => ends.push('end'));
    s.on('error', (e) => ends.push(`error ${(e as NodeJS.ErrnoException).code}`));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    server,
    address: `127.0.0.1:${port}`,
    ends,
    close: () => {
      sockets.forEach((s) => s.destroy());
      return new Promise((r) => server.close(() => r()));
    },
  };
}

/** A client socket that collects what it reads and how it ended. */
async function dial(address: string): Promise<{ socket: Socket; got: () => string; ends: string[] }> {
  const [host, port] = address.split(':');
  const socket = createConnection({ host, port: Number(port) });
  let got = '';
  const ends: string[] = [];
  socket.on('data', (b) => {
    got += b.toString();
  });
  socket.on('end', () => ends.push('end'));
  socket.on('error', (e) => ends.push(`error ${(e as NodeJS.ErrnoException).code}`));
  await new Promise<void>((r) => socket.once('connect', () => r()));
  return { socket, got: () => got, ends };
}

type Echo = Awaited<ReturnType<typeof echoServer>>;
type Client = Awaited<ReturnType<typeof dial>>;

/** An echo server behind a TcpProxy, and a client through it whose `first` write came back; `fn` runs on them, then both servers close. */
async function throughProxy(first: string, fn: (echo: Echo, proxy: TcpProxy, c: Client) => Promise<void>): Promise<void> {
  const echo = await echoServer();
  const proxy = await TcpProxy.start(echo.address);
  try {
    const c = await dial(proxy.address);
    c.socket.write(first);
    await eventually(() => c.got() === first, { what: 'the echo' });
    await fn(echo, proxy, c);
  } finally {
    await proxy.close();
    await echo.close();
  }
}

describe('TcpProxy', () => {
  it('forwards both ways, delays each chunk in order once a delay is set, and passes a half-close on', () =>
    throughProxy('a', async (echo, proxy, c) => {
      proxy.setDelayMs(40);
      const t0 = performance.now();
      for (const x of ['b', 'c', 'd']) c.socket.write(x);
      await eventually(() => c.got() === 'abcd', { what: 'the delayed echo', intervalMs: 2 });
      // 40 ms up, 40 ms down
      expect(performance.now() - t0).toBeGreaterThanOrEqual(78);
      proxy.setDelayMs(0);
      c.socket.end();
      await eventually(() => echo.ends.includes('end') && c.ends.includes('end'), { what: 'the half-close passed on and answered' });
    }));

  it('blackholes the open connections: nothing passes either way and neither side sees an end or a reset; new connections still pass', () =>
    throughProxy('x', async (echo, proxy, c) => {
      proxy.blackhole();
      c.socket.write('y');
      await sleep(300);
      expect(c.got()).toBe('x');
      expect(c.ends).toEqual([]);
      expect(echo.ends).toEqual([]);
      expect(c.socket.destroyed).toBe(false);
      expect(proxy.connections).toBe(1);
      const fresh = await dial(proxy.address);
      fresh.socket.write('z');
      await eventually(() => fresh.got() === 'z', { what: 'a new connection forwarded' });
      fresh.socket.destroy();
      c.socket.destroy();
    }));
});
