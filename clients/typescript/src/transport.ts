/**
 * How this package reaches a scheduler from Node: a gRPC (HTTP/2) transport from
 * @connectrpc/connect-node with the metadata of connection.ts. Both the Node SchedulerClient
 * and the agent SDK build their transport here (browsers: web.ts).
 */
import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { interceptorsOf, type ConnectionOptions } from "./connection.js";

export { credentialInterceptor, type ConnectionOptions } from "./connection.js";

/** The transport of `options`: theirs if given, else gRPC over HTTP/2 to baseUrl. */
export function createTransport(options: ConnectionOptions): Transport {
  if (options.transport !== undefined) return options.transport;
  return createGrpcTransport({
    baseUrl: options.baseUrl,
    interceptors: interceptorsOf(options),
    // No HTTP/2 keepalive pings: gRPC servers answer frequent pings with GOAWAY (too_many_pings).
    // Streams notice a dead peer by their own heartbeats (WatchJob, the agent's Connect).
  });
}
