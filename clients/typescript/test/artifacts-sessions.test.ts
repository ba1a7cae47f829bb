/**
 * Artifacts and task sessions of the TypeScript agent against a live scheduler
 * (test/scheduler.ts): a handler uploads a file (in chunks) that the client then lists and
 * downloads with the same sha256, and a downstream task reads it as its artifact input; artifact
 * failures arrive typed; a session's resource is shared by its tasks and disposed, and
 * onSessionEnded called, when the scheduler says the session ended, when its job is cancelled,
 * and when the agent stops.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ArtifactCheckError, CpaError, JobState, TaskState } from "../src/index.js";
import { downloadBytes, MAX_CHUNK_BYTES, type DownloadPart } from "../src/artifacts.js";
import { ArtifactSchema } from "../src/gen/cpa/common/v1/artifact_pb.js";
import {
  ARTIFACT_UPLOAD_FAILED,
  ArtifactError,
  INPUT_NOT_FOUND,
  SESSION_AGENT_STOPPED,
  SESSION_ATTEMPT_CANCELLED,
  type AgentOptions,
  type SessionEnd,
} from "../src/agent/index.js";
import { custom, finalState, liveFixture, startTestAgent, todosJob, watchAll } from "./helpers.js";
import { TcpProxy } from "./proxy.js";

const live = liveFixture();

function startAgent(agentId: string, handlers: AgentOptions["handlers"], options: Partial<AgentOptions> = {}) {
  const baseUrl = `http://${live.scheduler.agentAddress}`;
  return startTestAgent({ baseUrl, credential: live.scheduler.credential, agentId, handlers, ...options });
}

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

describe("artifacts of a TypeScript agent", () => {
  it("uploads a file the client lists and downloads, and a downstream task reads", async () => {
    // Over two chunks, and not a whole number of them.
    const shot = randomBytes(2 * MAX_CHUNK_BYTES + 12_345);
    const refusals: unknown[] = [];
    const { agent, running } = startAgent("ts-artifacts", {
      ts_shoot: async (ctx) => {
        refusals.push(await ctx.artifacts.save("bad/name", "text/plain", "x").catch((error: unknown) => error));
        const stored = await ctx.artifacts.save("shot.png", "image/png", shot);
        await ctx.artifacts.save("note.txt", "text/plain", "n");
        return { artifactId: stored.artifactId, sha256: stored.sha256 };
      },
      ts_inspect: async (ctx) => {
        refusals.push(await ctx.artifacts.readInput("nope").catch((error: unknown) => error));
        const { artifact, data } = await ctx.artifacts.readInput("shot");
        return { name: artifact.name, size: data.length, sha256: sha256(data), promised: ctx.artifacts.inputs["shot"]?.sha256 ?? "" };
      },
    });
    try {
      const job = await live.client.scheduleJob(
        todosJob(
          custom("shoot", "ts_shoot"),
          custom("inspect", "ts_inspect", {
            dependsOn: ["shoot"],
            inputs: { shot: { taskId: "shoot", target: { case: "artifactName", value: "shot.png" } } },
          }),
        ),
      );
      assert.equal(finalState(await watchAll(live.client, job.jobId)), JobState.SUCCEEDED);

      const listed = await live.client.listArtifacts(job.jobId);
      assert.deepEqual(
        listed.map((a) => [a.name, a.mediaType, a.sizeBytes, a.sha256, a.taskId, a.attempt]),
        [
          ["shot.png", "image/png", BigInt(shot.length), sha256(shot), "shoot", 1],
          ["note.txt", "text/plain", 1n, sha256(Buffer.from("n")), "shoot", 1],
        ],
      );
      // One artifact a page: the client follows next_page_token to the same list.
      const first = await live.client.raw.listArtifacts({ jobId: job.jobId, pageSize: 1 });
      assert.equal(first.artifacts.length, 1);
      assert.notEqual(first.nextPageToken, "");
      const paged = await live.client.listArtifacts(job.jobId, { pageSize: 1 });
      assert.deepEqual(
        paged.map((a) => a.artifactId),
        listed.map((a) => a.artifactId),
      );
      const { artifact, data } = await live.client.readArtifact(job.jobId, listed[0]!.artifactId);
      assert.equal(artifact.artifactId, listed[0]!.artifactId);
      assert.ok(Buffer.from(data).equals(shot), "the downloaded bytes are the uploaded ones");
      assert.deepEqual((await live.client.listArtifacts(job.jobId, { taskId: "inspect" })).length, 0);

      const done = await live.client.getJob(job.jobId);
      const outputs = Object.fromEntries(done.tasks.map((task) => [task.todo?.id, task.outputs]));
      assert.deepEqual(outputs, {
        shoot: { artifactId: listed[0]!.artifactId, sha256: sha256(shot) },
        inspect: { name: "shot.png", size: shot.length, sha256: sha256(shot), promised: sha256(shot) },
      });

      // Failures are typed: the scheduler's refusal (not retryable, its reason and field kept),
      // and an input the task does not have.
      const [refused, missing] = refusals;
      assert.ok(refused instanceof ArtifactError, `got ${String(refused)}`);
      assert.equal(refused.code, ARTIFACT_UPLOAD_FAILED);
      assert.equal(refused.options.retryable, false);
      assert.equal(refused.reason, "INVALID_FIELD");
      assert.ok(refused.cause instanceof CpaError && refused.cause.field === "header.name", `cause: ${String(refused.cause)}`);
      assert.deepEqual(refused.options.details, { grpc_status: "INVALID_ARGUMENT" });
      assert.ok(missing instanceof ArtifactError, `got ${String(missing)}`);
      assert.equal(missing.code, INPUT_NOT_FOUND);
    } finally {
      agent.drain("test over");
      await running;
    }
  });

  it("fails the attempt with the artifact error's code when the handler lets it through", async () => {
    const { agent, running } = startAgent("ts-artifact-fail", {
      ts_needs_input: async (ctx) => {
        await ctx.artifacts.readInput("report");
      },
    });
    try {
      const job = await live.client.scheduleJob(todosJob(custom("needs", "ts_needs_input")));
      assert.equal(finalState(await watchAll(live.client, job.jobId)), JobState.FAILED);
      const task = (await live.client.getJob(job.jobId)).tasks[0]!;
      assert.deepEqual([task.state, task.error?.code, task.error?.retryable], [TaskState.FAILED, INPUT_NOT_FOUND, false]);
    } finally {
      agent.drain("test over");
      await running;
    }
  });
});

describe("an artifact call cut with the agent's connection", () => {
  it("is made again on the next session, which adopted the attempt", async () => {
    const proxy = await TcpProxy.start(live.scheduler.agentAddress);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    // Larger than what HTTP/2 flow control lets out before the server answers: part of it is
    // surely on the wire when the connection is cut.
    const report = randomBytes(MAX_CHUNK_BYTES);
    const { agent, running } = startTestAgent({
      baseUrl: proxy.baseUrl,
      credential: live.scheduler.credential,
      agentId: "ts-artifact-cut",
      handlers: {
        ts_report: async (ctx) => {
          await gate;
          return { artifactId: (await ctx.artifacts.save("report.bin", "", report)).artifactId };
        },
      },
    });
    try {
      const job = await live.client.scheduleJob(todosJob(custom("report", "ts_report")));
      await agent.until(() => agent.runningAttempts.length === 1);
      const sessionsBefore = agent.sessionsStarted;
      proxy.hold();
      release();
      // Heartbeats are a few bytes: this much held is the upload's.
      while (proxy.heldBytes < 32 * 1024) await new Promise((resolve) => setTimeout(resolve, 5));
      proxy.cut();
      assert.equal(finalState(await watchAll(live.client, job.jobId)), JobState.SUCCEEDED);
      assert.ok(agent.sessionsStarted > sessionsBefore, "the agent reconnected");
      const [stored] = await live.client.listArtifacts(job.jobId);
      assert.deepEqual([stored?.name, stored?.sha256], ["report.bin", sha256(report)]);
      assert.deepEqual((await live.client.getJob(job.jobId)).tasks[0]!.outputs, { artifactId: stored!.artifactId });
    } finally {
      agent.drain("test over");
      await running;
      await proxy.close();
    }
  });
});

describe("a download's checks", () => {
  const artifact = (data: Uint8Array, digest = sha256(data)) =>
    create(ArtifactSchema, { name: "a.bin", sizeBytes: BigInt(data.length), sha256: digest });
  async function* parts(...items: DownloadPart[]) {
    yield* items;
  }
  const chunk = (value: Uint8Array): DownloadPart => ({ kind: { case: "chunk", value } });
  const bytes = new Uint8Array([1, 2, 3, 4]);

  it("refuses bytes whose sha256, or size, differ from the metadata", async () => {
    const wrongDigest = artifact(bytes, sha256(new Uint8Array([9])));
    await assert.rejects(downloadBytes(parts({ kind: { case: "artifact", value: wrongDigest } }, chunk(bytes))), ArtifactCheckError);
    await assert.rejects(
      downloadBytes(parts({ kind: { case: "artifact", value: artifact(bytes) } }, chunk(bytes), chunk(bytes))),
      /more than its 4 bytes/,
    );
    await assert.rejects(
      downloadBytes(parts({ kind: { case: "artifact", value: artifact(bytes) } }, chunk(bytes.subarray(0, 2)))),
      /2 bytes arrived, 4 expected/,
    );
    await assert.rejects(downloadBytes(parts(chunk(bytes))), /did not start with the artifact's metadata/);
  });

  it("takes bytes in chunks that match", async () => {
    const { data } = await downloadBytes(
      parts({ kind: { case: "artifact", value: artifact(bytes) } }, chunk(bytes.subarray(0, 1)), chunk(bytes.subarray(1))),
    );
    assert.deepEqual([...data], [...bytes]);
  });
});

describe("task sessions on a TypeScript agent", () => {
  /** A handler that uses the session's resource "browser" and says which one it got. */
  function sessionHandlers(log: string[]) {
    let made = 0;
    const useBrowser: AgentOptions["handlers"][string] = async (ctx) => {
      const browser = await ctx.sessionResource(
        "browser",
        () => ({ id: ++made, uses: 0 }),
        (value) => void log.push(`dispose ${value.id}`),
      );
      browser.uses += 1;
      return { browser: browser.id, uses: browser.uses };
    };
    const onSessionEnded = (end: SessionEnd) => void log.push(`ended ${end.session} ${end.reason}`);
    return { useBrowser, onSessionEnded };
  }

  it("shares a session's resource between its tasks and releases it when the scheduler says its last task ended", async () => {
    const log: string[] = [];
    const ended: SessionEnd[] = [];
    const { useBrowser, onSessionEnded } = sessionHandlers(log);
    const { agent, running } = startAgent(
      "ts-sessions",
      {
        ts_open: useBrowser,
        ts_use: useBrowser,
        // Outside the session, after it: runs once the session's end reached the agent.
        ts_after: async () => {
          // Bounded, so a missing end fails the test with what was seen instead of hanging it.
          const bound = new Promise((resolve) => setTimeout(resolve, 20_000).unref());
          await Promise.race([agent.until(() => ended.length > 0), bound]);
          return { sawEnd: ended[0]?.reason ?? "nothing" };
        },
      },
      { onSessionEnded: (end) => (ended.push(end), onSessionEnded(end)) },
    );
    try {
      const job = await live.client.scheduleJob(
        todosJob(
          custom("open", "ts_open", { session: "s1" }),
          custom("use", "ts_use", { session: "s1", dependsOn: ["open"] }),
          custom("after", "ts_after", { dependsOn: ["use"] }),
        ),
      );
      assert.equal(finalState(await watchAll(live.client, job.jobId)), JobState.SUCCEEDED);
      const done = await live.client.getJob(job.jobId);
      const outputs = Object.fromEntries(done.tasks.map((task) => [task.todo?.id, task.outputs]));
      assert.deepEqual(outputs, { open: { browser: 1, uses: 1 }, use: { browser: 1, uses: 2 }, after: { sawEnd: "completed" } });
      assert.deepEqual(ended.map((end) => [end.jobId, end.session, end.reason]), [[job.jobId, "s1", "completed"]]);
    } finally {
      agent.drain("test over");
      await running;
    }
    // Disposed once, before the hook; nothing more at the agent's stop (the session was closed).
    assert.deepEqual(log, ["dispose 1", "ended s1 completed"]);
  });

  it("releases the session of a cancelled job", async () => {
    const log: string[] = [];
    const { useBrowser, onSessionEnded } = sessionHandlers(log);
    let started!: () => void;
    const handlerStarted = new Promise<void>((resolve) => (started = resolve));
    const { agent, running } = startAgent(
      "ts-session-cancel",
      {
        ts_hold: async (ctx) => {
          await useBrowser(ctx);
          started();
          await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
        },
      },
      { onSessionEnded },
    );
    try {
      const job = await live.client.scheduleJob(todosJob(custom("hold", "ts_hold", { session: "s2" })));
      await handlerStarted;
      await live.client.cancelJob(job.jobId, "test over");
      assert.equal(finalState(await watchAll(live.client, job.jobId)), JobState.CANCELLED);
      // The scheduler's job_ended, the agent's own close of the cancelled attempt's session, or
      // both: the resource goes once, at the first.
      await agent.until(() => agent.closedSessions.length > 0);
      assert.equal(log[0], "dispose 1");
      assert.ok(
        ["ended s2 job_ended", `ended s2 ${SESSION_ATTEMPT_CANCELLED}`].includes(log[1] ?? ""),
        `log: ${JSON.stringify(log)}`,
      );
    } finally {
      agent.drain("test over");
      await running;
    }
    assert.equal(log.filter((line) => line.startsWith("dispose")).length, 1, `log: ${JSON.stringify(log)}`);
  });

  it("releases a session still open when the agent stops", async () => {
    const log: string[] = [];
    const { useBrowser, onSessionEnded } = sessionHandlers(log);
    const { agent, running } = startAgent("ts-session-stop", { ts_first: useBrowser }, { onSessionEnded });
    // The session's second task is an action nobody offers: the session stays open.
    const job = await live.client.scheduleJob(
      todosJob(
        custom("first", "ts_first", { session: "s3" }),
        custom("second", "ts_nobody_offers", { session: "s3", dependsOn: ["first"] }),
      ),
    );
    try {
      for await (const event of live.client.watch(job.jobId)) {
        if (event.kind.case === "taskStateChanged" && event.kind.value.taskId === "first" && event.kind.value.toState === TaskState.SUCCEEDED) break;
      }
    } finally {
      agent.drain("test over");
      await running;
    }
    assert.deepEqual(log, ["dispose 1", `ended s3 ${SESSION_AGENT_STOPPED}`]);
    await live.client.cancelJob(job.jobId, "test over");
  });
});
