/**
 * A TCP proxy in front of the scheduler that tests can freeze (bytes stop flowing both ways,
 * as on a dead network) and cut (every connection reset), as psycopg's proxy fixture does.
 */
import { createServer, connect, type Server, type Socket } from "node:net";

export class TcpProxy {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private frozen = false;
  private holding = false;
  /** Bytes each client connection sent while held (never forwarded). */
  private readonly held = new Map<Socket, number>();

  private constructor(private readonly upstreamHost: string, private readonly upstreamPort: number) {
    this.server = createServer((downstream) => this.accept(downstream));
  }

  static async start(upstream: string): Promise<TcpProxy> {
    const [host, port] = splitAddress(upstream);
    const proxy = new TcpProxy(host, port);
    await new Promise<void>((resolve) => proxy.server.listen(0, "127.0.0.1", resolve));
    return proxy;
  }

  get baseUrl(): string {
    const address = this.server.address();
    if (address === null || typeof address === "string") throw new Error("not listening");
    return `http://127.0.0.1:${address.port}`;
  }

  get connections(): number {
    return this.sockets.size / 2;
  }

  /** Stops forwarding: what is sent now waits in the socket buffers (and is lost by cut()). */
  freeze(): void {
    this.frozen = true;
    for (const socket of this.sockets) socket.pause();
  }

  /**
   * Stops forwarding what clients send, counting it instead (heldConnections), so that a test
   * knows its requests left the client and can never reach the server.
   */
  hold(): void {
    this.holding = true;
  }

  /** How many client connections sent bytes since hold(). */
  get heldConnections(): number {
    return this.held.size;
  }

  /** How many bytes clients sent since hold(). */
  get heldBytes(): number {
    let total = 0;
    for (const bytes of this.held.values()) total += bytes;
    return total;
  }

  /** Resets every connection; new ones are forwarded normally. */
  cut(): void {
    for (const socket of this.sockets) socket.resetAndDestroy();
    this.sockets.clear();
    this.frozen = false;
    this.holding = false;
    this.held.clear();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }

  private accept(downstream: Socket): void {
    const upstream = connect(this.upstreamPort, this.upstreamHost);
    for (const [from, to] of [
      [downstream, upstream],
      [upstream, downstream],
    ] as const) {
      this.sockets.add(from);
      if (this.frozen) from.pause();
      from.on("data", (chunk: Buffer) => {
        if (this.holding && from === downstream) {
          this.held.set(from, (this.held.get(from) ?? 0) + chunk.length);
        } else {
          to.write(chunk);
        }
      });
      from.on("end", () => to.end());
      from.on("error", () => to.destroy());
      from.on("close", () => {
        this.sockets.delete(from);
        to.destroy();
      });
    }
  }
}

function splitAddress(address: string): [string, number] {
  const colon = address.lastIndexOf(":");
  return [address.slice(0, colon), Number(address.slice(colon + 1))];
}
