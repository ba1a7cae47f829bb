/**
 * Repeating unary calls that failed in a way a repeat can cure, as the Python SDK does
 * (cpa_client.channels.retry_options and cpa_client.rate_limits):
 * - UNAVAILABLE (the scheduler unreachable) or a connection reset (connect-node says ABORTED
 *   without ErrorInfo; the scheduler's own ABORTED, REQUEST_ID_CONTENDED, carries one): only
 *   the calls safe to repeat, reads and the schedules (they carry request ids), with backoff;
 * - RATE_LIMITED: any call (the rate limiter refused it before it ran), after the delay the
 *   server's RetryInfo names plus a little jitter, while that delay is short enough.
 * Streams are not repeated here: watch() resumes itself, and the agent reconnects.
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { delay, fullJitterBackoffMs } from "./backoff.js";
import { CpaError } from "./errors.js";

export interface RetryOptions {
  /** Attempts of a repeatable call in all after UNAVAILABLE, the first included (default 5; 1: none). */
  readonly maxAttempts?: number;
  /** Backoff after UNAVAILABLE (full jitter): first cap and largest cap, ms (100, 2000). */
  readonly initialBackoffMs?: number;
  readonly maxBackoffMs?: number;
  /** Repeats after RATE_LIMITED (default 3; 0: raise at once). */
  readonly rateLimitAttempts?: number;
  /** The longest RetryInfo delay waited for (default 10 000 ms); a longer one is raised. */
  readonly rateLimitMaxWaitMs?: number;
}

/** Methods of SchedulerService that UNAVAILABLE may repeat (as RETRYABLE_METHODS in Python). */
export const REPEATABLE_METHODS: ReadonlySet<string> = new Set([
  "ScheduleJob",
  "BatchScheduleJobs",
  "GetJob",
  "ListJobs",
  "PreviewPlan",
  "ListAgents",
  "ListArtifacts",
  "ListCallbacks",
  "ListAuditEntries",
]);

const RATE_LIMITED = "RATE_LIMITED";

/** Whether the call failed on the way (no answer of the scheduler's): see the module's doc. */
export function cut(error: ConnectError): boolean {
  return error.code === Code.Unavailable || (error.code === Code.Aborted && new CpaError(error).reason === "");
}
const RATE_LIMIT_JITTER = 0.1;

/** The interceptor that repeats unary calls as `options` say (see the module's doc). */
export function retryInterceptor(options: RetryOptions = {}): Interceptor {
  const maxAttempts = options.maxAttempts ?? 5;
  const initialMs = options.initialBackoffMs ?? 100;
  const maxMs = options.maxBackoffMs ?? 2_000;
  const rateLimitAttempts = options.rateLimitAttempts ?? 3;
  const rateLimitMaxWaitMs = options.rateLimitMaxWaitMs ?? 10_000;
  return (next) => async (request) => {
    if (request.stream) return await next(request);
    const repeatable = REPEATABLE_METHODS.has(request.method.name);
    let unavailable = 0;
    let rateLimited = 0;
    for (;;) {
      try {
        return await next(request);
      } catch (error) {
        if (request.signal.aborted || !(error instanceof ConnectError)) throw error;
        if (repeatable && cut(error) && unavailable + 1 < maxAttempts) {
          await delay(fullJitterBackoffMs(unavailable, initialMs, maxMs), request.signal);
          unavailable += 1;
          continue;
        }
        const refusal = new CpaError(error);
        const waitMs = refusal.retryDelayMs;
        if (
          refusal.reason === RATE_LIMITED &&
          waitMs !== undefined &&
          waitMs <= rateLimitMaxWaitMs &&
          rateLimited < rateLimitAttempts
        ) {
          await delay(waitMs * (1 + Math.random() * RATE_LIMIT_JITTER), request.signal);
          rateLimited += 1;
          continue;
        }
        throw error;
      }
    }
  };
}
