/**
 * Per-call throughput of SchedulerClient.scheduleJob and getJob: at each concurrency C, C
 * callers schedule one-task jobs in a loop (one call per job, a fresh request id each; no agent
 * serves the action, so the jobs stay queued and only the call is measured) for N calls in all,
 * then read those jobs back with N getJob calls (FULL view). Prints calls/s, latency
 * percentiles and this process's CPU per call. Against `cpa serve` started here (embedded
 * store, no rate limits), or CPA_TEST_SERVER/CPA_TEST_CREDENTIAL as the tests take them.
 * CPA_BENCH_JSON=1 prints one JSON object per phase instead (bench/bench_clients.py reads it);
 * CPA_BENCH_REQUEST_IDS=0 schedules without request ids (the client's default sends a UUID).
 *
 *   npm run bench -- [calls=2000] [concurrency=32 ...]
 */
import { ActionType, SchedulerClient } from "../src/index.js";
import { startScheduler } from "../test/scheduler.js";

const calls = Number(process.argv[2] ?? 2000);
const concurrencies = process.argv.length > 3 ? process.argv.slice(3).map(Number) : [32];
const asJson = process.env["CPA_BENCH_JSON"] === "1";
// "": no request id (ScheduleOptions.requestId); undefined: the client's fresh UUID.
const requestId = process.env["CPA_BENCH_REQUEST_IDS"] === "0" ? "" : undefined;

interface Phase {
  client: "typescript";
  rpc: "ScheduleJob" | "GetJob";
  concurrency: number;
  calls: number;
  calls_per_s: number;
  p50_ms: number;
  p95_ms: number;
  p99_ms: number;
  client_cpu_ms_per_call: number;
}

/** Runs `call(i)` for i in 0..calls-1 from `concurrency` loops; the phase's figures. */
async function measure(rpc: Phase["rpc"], concurrency: number, call: (index: number) => Promise<void>): Promise<Phase> {
  const latenciesMs: number[] = [];
  let next = 0;
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < calls) {
        const index = next++;
        const callStarted = performance.now();
        await call(index);
        latenciesMs.push(performance.now() - callStarted);
      }
    }),
  );
  const elapsedS = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  latenciesMs.sort((a, b) => a - b);
  const percentile = (p: number) => latenciesMs[Math.min(latenciesMs.length - 1, Math.floor((p / 100) * latenciesMs.length))]!;
  return {
    client: "typescript",
    rpc,
    concurrency,
    calls,
    calls_per_s: calls / elapsedS,
    p50_ms: percentile(50),
    p95_ms: percentile(95),
    p99_ms: percentile(99),
    client_cpu_ms_per_call: (cpu.user + cpu.system) / 1000 / calls,
  };
}

// No rate limits: the figure is the call path, not the limiter.
const scheduler = await startScheduler({ CPA_RATE_LIMIT_PER_KEY: "0", CPA_RATE_LIMIT_PER_IP: "0" });
try {
  const client = new SchedulerClient({ baseUrl: scheduler.baseUrl, credential: scheduler.credential });
  const spec = {
    source: { case: "todos" as const, value: { todos: [{ id: "t", action: ActionType.CUSTOM, customAction: "bench_nobody" }] } },
  };
  await client.scheduleJob(spec); // warm-up: connection, first-call costs
  for (const concurrency of concurrencies) {
    const jobIds: string[] = new Array(calls);
    const phases = [
      await measure("ScheduleJob", concurrency, async (index) => {
        jobIds[index] = (await client.scheduleJob(spec, { requestId })).jobId;
      }),
      await measure("GetJob", concurrency, async (index) => {
        await client.getJob(jobIds[index]!);
      }),
    ];
    for (const phase of phases) {
      console.log(
        asJson
          ? JSON.stringify(phase)
          : `typescript ${phase.rpc}: ${calls} calls, ${concurrency} concurrent: ${phase.calls_per_s.toFixed(0)} calls/s; ` +
              `latency ms p50 ${phase.p50_ms.toFixed(1)} p95 ${phase.p95_ms.toFixed(1)} p99 ${phase.p99_ms.toFixed(1)}; ` +
              `client CPU ${phase.client_cpu_ms_per_call.toFixed(3)} ms/call`,
      );
    }
  }
} finally {
  await scheduler.stop();
}
