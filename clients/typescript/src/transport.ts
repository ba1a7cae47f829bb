/**
 * How this package reaches a scheduler: a gRPC (HTTP/2) transport from @connectrpc/connect-node
 * and the metadata every call carries (the credential, and the tenant with authentication off).
 * Both SchedulerClient and the agent SDK build their transport here.
 */
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

export interface ConnectionOptions {
  /** `http://host:port` (plaintext, loopback) or `https://host:port` (TLS). */
  readonly baseUrl: string;
  /**
   * An API key, a JWT or an agent token, sent as `authorization: Bearer <credential>` on every
   * call (docs/SECURITY.md). Omit it against `cpa serve --insecure-local`.
   */
  readonly credential?: string;
  /** Metadata `x-cpa-tenant`: the tenant, only read with authentication off (--insecure-local). */
  readonly tenant?: string;
  /** Your own transport (browser: createGrpcWebTransport through the gateway); baseUrl is then unused. */
  readonly transport?: Transport;
  /** More interceptors (tracing, logging), run after the credential one. */
  readonly interceptors?: readonly Interceptor[];
}

/** Adds the credential and tenant metadata to every request. */
export function credentialInterceptor(credential?: string, tenant?: string): Interceptor {
  return (next) => async (request) => {
    if (credential) request.header.set("authorization", `Bearer ${credential}`);
    if (tenant) request.header.set("x-cpa-tenant", tenant);
    return await next(request);
  };
}

/** The transport of `options`: theirs if given, else gRPC over HTTP/2 to baseUrl. */
export function createTransport(options: ConnectionOptions): Transport {
  if (options.transport !== undefined) return options.transport;
  return createGrpcTransport({
    baseUrl: options.baseUrl,
    interceptors: [
      credentialInterceptor(options.credential, options.tenant),
      ...(options.interceptors ?? []),
    ],
    // No HTTP/2 keepalive pings: gRPC servers answer frequent pings with GOAWAY (too_many_pings).
    // Streams notice a dead peer by their own heartbeats (WatchJob, the agent's Connect).
  });
}
