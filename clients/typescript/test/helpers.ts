/**
 * What the live tests share: the file's scheduler and client, jobs of custom ToDos, a test
 * agent, and a watch read to the job's end.
 */
import { after, before } from "node:test";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ActionType, ToDoSchema } from "../src/gen/cpa/common/v1/todo_pb.js";
import { JobState, SchedulerClient, type JobEvent, type JobSpecInit } from "../src/index.js";
import { Agent, type AgentOptions } from "../src/agent/index.js";
import { startScheduler, type LiveScheduler } from "./scheduler.js";

export interface LiveFixture {
  readonly scheduler: LiveScheduler;
  /** A client of the scheduler with its admin credential. */
  readonly client: SchedulerClient;
}

/** The test file's scheduler (test/scheduler.ts), started before its tests and stopped after. */
export function liveFixture(): LiveFixture {
  const live: { scheduler?: LiveScheduler; client?: SchedulerClient } = {};
  before(async () => {
    live.scheduler = await startScheduler();
    live.client = new SchedulerClient({ baseUrl: live.scheduler.baseUrl, credential: live.scheduler.credential });
  });
  after(async () => {
    await live.scheduler?.stop();
  });
  return live as LiveFixture;
}

export type ToDoInit = MessageInitShape<typeof ToDoSchema>;

/** A ToDo of a custom action (each test's agent offers its own). */
export function custom(id: string, action: string, extra: ToDoInit = {}): ToDoInit {
  return { ...extra, id, action: ActionType.CUSTOM, customAction: action };
}

/** A job spec of these ToDos. */
export function todosJob(...todos: ToDoInit[]): JobSpecInit {
  return { source: { case: "todos", value: { todos } } };
}

/** An agent of a test, running: unique actions per test, so no other test's agent takes its tasks. */
export function startTestAgent(options: Pick<AgentOptions, "baseUrl" | "credential" | "agentId" | "handlers"> & Partial<AgentOptions>) {
  const agent = new Agent({
    slots: 2,
    reconnectInitialMs: 50,
    reconnectMaxMs: 500,
    drainTimeoutMs: 5_000,
    log: process.env["CPA_TEST_VERBOSE"] ? console.error : undefined,
    ...options,
  });
  const running = agent.run();
  return { agent, running };
}

export async function watchAll(
  client: SchedulerClient,
  jobId: string,
  options: Parameters<SchedulerClient["watch"]>[1] = {},
): Promise<JobEvent[]> {
  const events: JobEvent[] = [];
  for await (const event of client.watch(jobId, options)) events.push(event);
  return events;
}

export function finalState(events: JobEvent[]): JobState | undefined {
  const last = events.at(-1);
  return last?.kind.case === "jobStateChanged" ? last.kind.value.toState : undefined;
}
