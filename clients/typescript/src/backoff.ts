/** Full-jitter exponential backoff and an abortable delay, shared by watch() and the agent. */

/** Uniform in [0, min(maxMs, initialMs * 2^failures)] (as cpa_agent.reconnect does). */
export function fullJitterBackoffMs(failures: number, initialMs: number, maxMs: number): number {
  const capMs = Math.min(maxMs, initialMs * 2 ** Math.min(failures, 32));
  return Math.random() * capMs;
}

/** Resolves after `ms`, or at once when `signal` aborts (never rejects). */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}
