/**
 * Run as a child process by live.test.ts: watches a job and leaves the watch after its first
 * event (a `break`). Nothing else is pending, so the process must then end by itself: a watch
 * left early closes its stream.
 */
import { SchedulerClient } from "../src/index.js";

const [baseUrl, credential, jobId] = process.argv.slice(2) as [string, string, string];
const client = new SchedulerClient({ baseUrl, credential });
for await (const event of client.watch(jobId)) {
  process.stdout.write(`event ${event.sequence}\n`);
  break;
}
