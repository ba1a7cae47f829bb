/**
 * Per-call throughput of SchedulerClient.scheduleJob: C concurrent callers, each scheduling
 * one-task jobs in a loop (one call per job, a fresh request id each), for N jobs in all.
 * Prints calls/s and the latency percentiles. Against `cpa serve` started here (embedded
 * store), or CPA_TEST_SERVER/CPA_TEST_CREDENTIAL as the tests take them.
 *
 *   npm run bench -- [jobs=2000] [concurrency=32]
 */
import { ActionType, SchedulerClient } from "../src/index.js";
import { startScheduler } from "../test/scheduler.js";

const jobs = Number(process.argv[2] ?? 2000);
const concurrency = Number(process.argv[3] ?? 32);

// No rate limits: the figure is the call path, not the limiter.
const scheduler = await startScheduler({ CPA_RATE_LIMIT_PER_KEY: "0", CPA_RATE_LIMIT_PER_IP: "0" });
try {
  const client = new SchedulerClient({ baseUrl: scheduler.baseUrl, credential: scheduler.credential });
  const spec = {
    source: { case: "todos" as const, value: { todos: [{ id: "t", action: ActionType.CUSTOM, customAction: "bench_nobody" }] } },
  };
  await client.scheduleJob(spec); // warm-up: connection, first-call costs
  const latenciesMs: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < jobs) {
        next += 1;
        const callStarted = performance.now();
        await client.scheduleJob(spec);
        latenciesMs.push(performance.now() - callStarted);
      }
    }),
  );
  const elapsedS = (performance.now() - started) / 1000;
  latenciesMs.sort((a, b) => a - b);
  const percentile = (p: number) => latenciesMs[Math.min(latenciesMs.length - 1, Math.floor((p / 100) * latenciesMs.length))]!.toFixed(1);
  console.log(
    `typescript scheduleJob: ${jobs} calls, ${concurrency} concurrent: ${(jobs / elapsedS).toFixed(0)} calls/s; ` +
      `latency ms p50 ${percentile(50)} p95 ${percentile(95)} p99 ${percentile(99)}`,
  );
} finally {
  await scheduler.stop();
}
