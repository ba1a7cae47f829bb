/**
 * What every transport of this package shares, whichever runtime it is for: the connection
 * options and the metadata every call carries (the credential, and the tenant with
 * authentication off). transport.ts builds Node's gRPC transport from them, web.ts the
 * browser's gRPC-web one; this module imports neither, so a browser bundle never pulls Node's.
 */
import type { Interceptor, Transport } from "@connectrpc/connect";
import { retryInterceptor, type RetryOptions } from "./retry.js";

export interface ConnectionOptions {
  /**
   * Node: `http://host:port` (plaintext, loopback) or `https://host:port` (TLS), the scheduler
   * or the gateway. Browser (web.ts): the gateway's URL, e.g. `https://cpa.example.com`.
   */
  readonly baseUrl: string;
  /**
   * An API key, a JWT or an agent token, sent as `authorization: Bearer <credential>` on every
   * call (docs/SECURITY.md). Omit it against `cpa serve --insecure-local`.
   */
  readonly credential?: string;
  /** Metadata `x-cpa-tenant`: the tenant, only read with authentication off (--insecure-local). */
  readonly tenant?: string;
  /** Your own transport; baseUrl is then unused. */
  readonly transport?: Transport;
  /** More interceptors (tracing, logging), run after the credential one. */
  readonly interceptors?: readonly Interceptor[];
  /**
   * How unary calls are repeated after UNAVAILABLE (reads and schedules only) and RATE_LIMITED
   * (retry.ts); `false`: never. Default: as the Python SDK (5 attempts; 3 rate-limit repeats of
   * at most 10 s each).
   */
  readonly retry?: RetryOptions | false;
}

/** Adds the credential and tenant metadata to every request. */
export function credentialInterceptor(credential?: string, tenant?: string): Interceptor {
  return (next) => async (request) => {
    if (credential) request.header.set("authorization", `Bearer ${credential}`);
    if (tenant) request.header.set("x-cpa-tenant", tenant);
    return await next(request);
  };
}

/** The retries (outermost: each attempt goes through the rest), the credential, the caller's. */
export function interceptorsOf(options: ConnectionOptions): Interceptor[] {
  const retry = options.retry === false ? [] : [retryInterceptor(options.retry)];
  return [...retry, credentialInterceptor(options.credential, options.tenant), ...(options.interceptors ?? [])];
}
