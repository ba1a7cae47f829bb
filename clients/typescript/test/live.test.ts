/**
 * The package against a live scheduler (test/scheduler.ts): a TypeScript client drives jobs a
 * TypeScript agent runs (a DAG with an output reference), a cancel reaches the agent's handler,
 * a cut connection is survived by both (the agent sends its unacked result again, the watch
 * resumes without gap or duplicate), and errors arrive typed (code, reason, field).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { Code, CpaError, JobState, SchedulerClient, TaskState, type JobEvent } from "../src/index.js";
import { TaskFailure, type AgentOptions, type TaskContext } from "../src/agent/index.js";
import { custom, finalState, liveFixture, startTestAgent, watchAll } from "./helpers.js";
import { EXTERNAL_SCHEDULER, startScheduler } from "./scheduler.js";
import { TcpProxy } from "./proxy.js";

const live = liveFixture();

/** An agent of the test on `baseUrl` with the scheduler's credential. */
function startAgent(baseUrl: string, agentId: string, handlers: AgentOptions["handlers"]) {
  return startTestAgent({ baseUrl, credential: live.scheduler.credential, agentId, handlers });
}

function watchToTheEnd(jobId: string, options: Parameters<SchedulerClient["watch"]>[1] = {}): Promise<JobEvent[]> {
  return watchAll(live.client, jobId, options);
}

describe("a TypeScript agent runs a TypeScript client's job", () => {
  it("runs a DAG whose second task reads the first one's output", async () => {
    const seen: TaskContext[] = [];
    const { agent, running } = startAgent(`http://${live.scheduler.agentAddress}`, "ts-dag", {
      ts_fetch: (ctx) => {
        seen.push(ctx);
        ctx.progress(50, "half way");
        return { value: (ctx.params["base"] as number) + 1 };
      },
      ts_add: (ctx) => {
        seen.push(ctx);
        return { sum: (ctx.inputs["x"] as number) + 1 };
      },
    });
    try {
      const job = await live.client.scheduleJob({
        source: {
          case: "todos",
          value: {
            todos: [
              custom("fetch", "ts_fetch", { params: { base: 40 } }),
              custom("add", "ts_add", { dependsOn: ["fetch"], inputs: { x: { taskId: "fetch", target: { case: "outputKey", value: "value" } } } }),
            ],
          },
        },
      });
      const events = await watchToTheEnd(job.jobId);
      assert.equal(finalState(events), JobState.SUCCEEDED);
      const done = await live.client.getJob(job.jobId);
      const outputs = Object.fromEntries(done.tasks.map((task) => [task.todo?.id, task.outputs]));
      assert.deepEqual(outputs, { fetch: { value: 41 }, add: { sum: 42 } });
      assert.deepEqual(seen.map((ctx) => [ctx.taskId, ctx.action, ctx.attempt]), [["fetch", "ts_fetch", 1], ["add", "ts_add", 1]]);
      assert.deepEqual(seen[1]!.inputs, { x: 41 });
      // Every event once, in order.
      const sequences = events.map((event) => Number(event.sequence));
      assert.deepEqual(sequences, sequences.map((_, index) => index + 1));
    } finally {
      agent.drain("test over");
      await running;
    }
    assert.equal(agent.unackedResults.length, 0);
  });

  it("fails a task with the code of the handler's TaskFailure, retried only when retryable", async () => {
    let calls = 0;
    const { agent, running } = startAgent(`http://${live.scheduler.agentAddress}`, "ts-fail", {
      ts_refuse: () => {
        calls += 1;
        throw new TaskFailure("NO_SUCH_INVOICE", "invoice 42 does not exist", { details: { invoice: 42 } });
      },
    });
    try {
      const job = await live.client.scheduleJob({ source: { case: "todos", value: { todos: [custom("refuse", "ts_refuse")] } } });
      assert.equal(finalState(await watchToTheEnd(job.jobId)), JobState.FAILED);
      const task = (await live.client.getJob(job.jobId)).tasks[0]!;
      assert.equal(task.state, TaskState.FAILED);
      assert.deepEqual([task.error?.code, task.error?.message, task.error?.retryable], ["NO_SUCH_INVOICE", "invoice 42 does not exist", false]);
      assert.deepEqual(task.error?.details, { invoice: 42 });
      assert.equal(calls, 1);
    } finally {
      agent.drain("test over");
      await running;
    }
  });

  it("hands a cancel to the running handler's AbortSignal and reports the attempt cancelled", async () => {
    let started!: () => void;
    const handlerStarted = new Promise<void>((resolve) => (started = resolve));
    let abortReason: unknown;
    const { agent, running } = startAgent(`http://${live.scheduler.agentAddress}`, "ts-cancel", {
      ts_block: (ctx) =>
        new Promise((_, reject) => {
          started();
          ctx.signal.addEventListener("abort", () => {
            abortReason = ctx.signal.reason;
            reject(new Error("stopped"));
          });
        }),
    });
    try {
      const job = await live.client.scheduleJob({ source: { case: "todos", value: { todos: [custom("block", "ts_block")] } } });
      const watching = watchToTheEnd(job.jobId);
      await handlerStarted;
      await live.client.cancelJob(job.jobId, "the operator said stop");
      const events = await watching;
      assert.equal(finalState(events), JobState.CANCELLED);
      assert.equal(abortReason, "the operator said stop");
      // The attempt's cancelled result was sent and acked.
      await agent.until(() => agent.unackedResults.length === 0 && agent.runningAttempts.length === 0);
      const done = await live.client.getJob(job.jobId);
      assert.equal(done.tasks[0]!.state, TaskState.CANCELLED);
    } finally {
      agent.drain("test over");
      await running;
    }
  });
});

describe("draining", () => {
  it("on SIGTERM stops taking work but finishes the running attempt and its ack first", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const { agent, running } = startAgent(`http://${live.scheduler.agentAddress}`, "ts-drain", {
      ts_slow: async () => {
        await gate;
        return { finished: true };
      },
    });
    const removeHandlers = agent.handleSignals();
    try {
      const job = await live.client.scheduleJob({ source: { case: "todos", value: { todos: [custom("slow", "ts_slow")] } } });
      await agent.until(() => agent.runningAttempts.length === 1);
      process.emit("SIGTERM", "SIGTERM"); // the handler's path, without signalling the test runner
      assert.ok(agent.draining);
      let ended = false;
      void running.then(() => (ended = true));
      // Still running: the drain waits for the attempt.
      await agent.until(() => agent.draining);
      assert.equal(ended, false);
      release();
      await running;
      assert.deepEqual([agent.runningAttempts.length, agent.unackedResults.length], [0, 0]);
      const done = await live.client.getJob(job.jobId);
      assert.equal(done.state, JobState.SUCCEEDED);
      assert.deepEqual(done.tasks[0]!.outputs, { finished: true });
    } finally {
      removeHandlers();
      release();
      agent.drain("test over");
      await running;
    }
  });

  it("on a second SIGTERM stops at once, aborting the running handler", async () => {
    let started!: () => void;
    const handlerStarted = new Promise<void>((resolve) => (started = resolve));
    let aborted = false;
    const { agent, running } = startAgent(`http://${live.scheduler.agentAddress}`, "ts-stop-now", {
      ts_forever: (ctx) =>
        new Promise(() => {
          started();
          ctx.signal.addEventListener("abort", () => (aborted = true));
        }),
    });
    const removeHandlers = agent.handleSignals();
    try {
      const job = await live.client.scheduleJob({ source: { case: "todos", value: { todos: [custom("forever", "ts_forever")] } } });
      await handlerStarted;
      process.emit("SIGTERM", "SIGTERM");
      process.emit("SIGTERM", "SIGTERM");
      await running; // does not wait for the handler, which never ends
      assert.equal(aborted, true);
      assert.equal(agent.connected, false);
      await live.client.cancelJob(job.jobId, "test over");
    } finally {
      removeHandlers();
    }
  });
});

describe("a cut connection", () => {
  it("is survived: the agent resends its unacked result, the watch resumes without gap or duplicate", async () => {
    // One proxy for the agent's stream, one for the watch (two replicas in the distributed run).
    const proxy = await TcpProxy.start(live.scheduler.agentAddress);
    const watchProxy = await TcpProxy.start(live.scheduler.address);
    const proxied = new SchedulerClient({ baseUrl: watchProxy.baseUrl, credential: live.scheduler.credential });
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let calls = 0;
    const { agent, running } = startAgent(proxy.baseUrl, "ts-cut", {
      ts_gated: async () => {
        calls += 1;
        await gate;
        return { done: true };
      },
    });
    try {
      await agent.until(() => agent.connected);
      const job = await live.client.scheduleJob({ source: { case: "todos", value: { todos: [custom("gated", "ts_gated")] } } });
      const reconnects: bigint[] = [];
      const events: JobEvent[] = [];
      let watchStarted!: () => void;
      const firstEvent = new Promise<void>((resolve) => (watchStarted = resolve));
      const watching = (async () => {
        for await (const event of proxied.watch(job.jobId, { reconnectInitialMs: 50, onReconnect: (_, after) => reconnects.push(after) })) {
          events.push(event);
          watchStarted();
        }
      })();
      // Both streams are open through the proxy before it freezes.
      await firstEvent;
      await agent.until(() => agent.runningAttempts.length === 1);
      // The next bytes go nowhere: the result is written but never reaches the server.
      proxy.freeze();
      watchProxy.freeze();
      release();
      await agent.until(() => agent.unackedResults.length === 1 && agent.runningAttempts.length === 0);
      const sessionsBefore = agent.sessionsStarted;
      proxy.cut();
      watchProxy.cut();
      await agent.until(() => agent.sessionsStarted > sessionsBefore && agent.unackedResults.length === 0);
      await watching;
      assert.equal(finalState(events), JobState.SUCCEEDED);
      assert.equal(calls, 1, "the handler ran once; its result was sent again, not the task");
      assert.ok(reconnects.length >= 1 && reconnects[0]! > 0n, "the watch resumed after the events it had");
      const sequences = events.map((event) => Number(event.sequence));
      assert.deepEqual(sequences, sequences.map((_, index) => index + 1));
      // The same history as a fresh watch from the start reads.
      const replay = await watchToTheEnd(job.jobId);
      assert.deepEqual(replay.map((event) => event.sequence), events.map((event) => event.sequence));
      const done = await live.client.getJob(job.jobId);
      assert.deepEqual(done.tasks[0]!.outputs, { done: true });
      assert.equal(done.tasks[0]!.attempts.length, 1);
    } finally {
      agent.drain("test over");
      await running;
      await proxy.close();
      await watchProxy.close();
    }
  });
});

describe("a refused hello", () => {
  it("stops the agent with the CpaError naming the field, instead of reconnecting for ever", async () => {
    const { running } = startTestAgent({
      baseUrl: `http://${live.scheduler.agentAddress}`,
      credential: live.scheduler.credential,
      agentId: "ts-refused",
      handlers: { ts_refused: () => ({}) },
      labels: { Site: "berlin" }, // label keys are lower case (AgentCapabilities.labels)
    });
    const refused = await running.then(
      () => undefined,
      (error: unknown) => error,
    );
    assert.ok(refused instanceof CpaError, `expected a CpaError, got ${String(refused)}`);
    assert.equal(refused.code, Code.InvalidArgument);
    assert.equal(refused.reason, "INVALID_FIELD");
    assert.equal(refused.field, "hello.capabilities.labels[Site]");
  });
});

describe("errors", () => {
  it("arrive as CpaError with code, reason and the field at fault", async () => {
    const error = await live.client
      .scheduleJob({ source: { case: "todos", value: { todos: [custom("a", "ts_none", { dependsOn: ["ghost"] })] } } })
      .then(() => undefined, (caught: unknown) => caught);
    assert.ok(error instanceof CpaError, `expected a CpaError, got ${String(error)}`);
    assert.equal(error.code, Code.InvalidArgument);
    assert.equal(error.reason, "UNKNOWN_DEPENDENCY");
    assert.equal(error.field, "spec.todos.todos[0].depends_on[0]");
    assert.deepEqual(
      error.fieldViolations.map((violation) => violation.field),
      ["spec.todos.todos[0].depends_on[0]"],
    );
    assert.match(error.serverMessage, /ghost/);
  });

  it("say NOT_FOUND with JOB_NOT_FOUND for an unknown job", async () => {
    await assert.rejects(live.client.getJob("0".repeat(32)), (error: unknown) => {
      assert.ok(error instanceof CpaError);
      assert.equal(error.code, Code.NotFound);
      assert.equal(error.reason, "JOB_NOT_FOUND");
      return true;
    });
  });

  it("say UNAUTHENTICATED without a credential", async () => {
    const anonymous = new SchedulerClient({ baseUrl: live.scheduler.baseUrl });
    await assert.rejects(anonymous.getJob("0".repeat(32)), (error: unknown) => {
      assert.ok(error instanceof CpaError);
      assert.equal(error.code, Code.Unauthenticated);
      assert.notEqual(error.reason, "");
      return true;
    });
  });
});

describe("a rate-limited call", () => {
  // A scheduler of its own with a tiny per-address limit (an external one keeps its limits).
  it("says RESOURCE_EXHAUSTED / RATE_LIMITED with the RetryInfo delay", { skip: EXTERNAL_SCHEDULER }, async () => {
    const limited = await startScheduler({ CPA_RATE_LIMITS_ENABLED: "true", CPA_RATE_LIMIT_PER_IP: "3" });
    try {
      const limitedClient = new SchedulerClient({ baseUrl: limited.baseUrl, credential: limited.credential });
      let refused: unknown;
      for (let call = 0; call < 10 && refused === undefined; call += 1) {
        await limitedClient.listJobs().next().catch((error: unknown) => (refused = error));
      }
      assert.ok(refused instanceof CpaError, `expected a CpaError, got ${String(refused)}`);
      assert.equal(refused.code, Code.ResourceExhausted);
      assert.equal(refused.reason, "RATE_LIMITED");
      assert.ok(refused.retryDelayMs !== undefined && refused.retryDelayMs > 0, `retry delay ${refused.retryDelayMs}`);
    } finally {
      await limited.stop();
    }
  });
});

describe("repeated calls", () => {
  it("a rate-limited call is repeated after the RetryInfo delay", { skip: EXTERNAL_SCHEDULER }, async () => {
    // 120 calls a minute from this address: one comes back every 0.5 s.
    const limited = await startScheduler({ CPA_RATE_LIMITS_ENABLED: "true", CPA_RATE_LIMIT_PER_IP: "120" });
    try {
      const options = { baseUrl: limited.baseUrl, credential: limited.credential };
      const impatient = new SchedulerClient({ ...options, retry: { rateLimitAttempts: 0 } });
      const patient = new SchedulerClient(options);
      let refused: unknown;
      for (let call = 0; call < 200 && refused === undefined; call += 1) {
        await impatient.listJobs().next().catch((error: unknown) => (refused = error));
      }
      assert.ok(refused instanceof CpaError && refused.reason === "RATE_LIMITED", `got ${String(refused)}`);
      // The bucket is empty; a client honouring RetryInfo waits for its turn instead of failing.
      const page = await patient.listJobs().next();
      assert.equal(page.done, true);
      await assert.rejects(impatient.listJobs().next(), (error: unknown) => error instanceof CpaError && error.reason === "RATE_LIMITED");
    } finally {
      await limited.stop();
    }
  });

  it("a read cut by a reset connection is repeated; a cancel is not", async () => {
    const proxy = await TcpProxy.start(live.scheduler.address);
    try {
      const job = await live.client.scheduleJob({ source: { case: "todos", value: { todos: [custom("x", "ts_nobody")] } } });
      const options = { baseUrl: proxy.baseUrl, credential: live.scheduler.credential };
      const reader = new SchedulerClient(options);
      const readerOnce = new SchedulerClient({ ...options, retry: false });
      const canceller = new SchedulerClient(options);
      // One connection each, open before the calls under test.
      for (const each of [reader, readerOnce, canceller]) await each.getJob(job.jobId);
      // The calls' requests leave the clients and go nowhere; then their connections reset.
      proxy.hold();
      const read = reader.getJob(job.jobId);
      const readOnce = readerOnce.getJob(job.jobId).then(() => undefined, (error: unknown) => error);
      const cancel = canceller.cancelJob(job.jobId, "test").then(() => undefined, (error: unknown) => error);
      while (proxy.heldConnections < 3) await new Promise((resolve) => setTimeout(resolve, 5));
      proxy.cut();
      assert.equal((await read).jobId, job.jobId, "the read was repeated on a new connection");
      const failed = await readOnce;
      // A reset connection: UNAVAILABLE, or ABORTED as connect-node names ECONNRESET.
      const cutCodes = [Code.Unavailable, Code.Aborted];
      assert.ok(failed instanceof CpaError && cutCodes.includes(failed.code), `got ${String(failed)}`);
      const cancelFailed = await cancel;
      assert.ok(cancelFailed instanceof CpaError && cutCodes.includes(cancelFailed.code), `got ${String(cancelFailed)}`);
      assert.equal((await live.client.getJob(job.jobId)).cancelRequested, false, "the cut cancel never reached the server");
      await live.client.cancelJob(job.jobId, "test over");
    } finally {
      await proxy.close();
    }
  });
});

describe("watch", () => {
  it("left early (a break) closes its stream: the process ends by itself", async () => {
    const job = await live.client.scheduleJob({ source: { case: "todos", value: { todos: [custom("x", "ts_nobody")] } } });
    try {
      const script = fileURLToPath(new URL("./watch-break.js", import.meta.url));
      const child = spawn(process.execPath, [script, live.scheduler.baseUrl, live.scheduler.credential, job.jobId], { stdio: ["ignore", "pipe", "inherit"] });
      let output = "";
      child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
      // Bounded: a stream left open keeps the child alive for ever (the job never ends).
      const killer = setTimeout(() => child.kill("SIGKILL"), 20_000);
      const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => child.once("exit", (c, s) => resolve([c, s])));
      clearTimeout(killer);
      assert.deepEqual([code, signal, output], [0, null, "event 1\n"]);
    } finally {
      await live.client.cancelJob(job.jobId, "test over");
    }
  });
});

describe("listJobs", () => {
  it("walks every page of a filter's matches", async () => {
    const suite = `list-${Date.now()}`;
    const ids: string[] = [];
    for (let index = 0; index < 3; index += 1) {
      const job = await live.client.scheduleJob({
        source: { case: "todos", value: { todos: [custom("x", "ts_nobody")] } },
        labels: { suite },
      });
      ids.push(job.jobId);
    }
    const listed: string[] = [];
    for await (const job of live.client.listJobs({ filter: `labels.suite = "${suite}"`, pageSize: 1 })) listed.push(job.jobId);
    // Newest first, each once, across three pages of one.
    assert.deepEqual(listed, [...ids].reverse());
    for (const id of ids) await live.client.cancelJob(id, "test over");
  });
});
