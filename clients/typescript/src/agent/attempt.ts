/**
 * One attempt of a task on this agent: the context a handler sees, the handler's run with its
 * AbortSignal (cancel, task timeout, job deadline, agent shutdown), and the Result it ends in.
 * The stream protocol (reports, acks, reconnects) is agent.ts's business, not this one's.
 */
import { create, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { ActionType, type ToDo } from "../gen/cpa/common/v1/todo_pb.js";
import { ErrorReason, TaskErrorSchema, type TaskError } from "../gen/cpa/common/v1/error_pb.js";
import {
  ResultSchema,
  type Assignment,
  type Result,
} from "../gen/cpa/executor/v1/executor_service_pb.js";
import type { ArtifactAccess } from "./artifacts.js";
import type { ResourceDisposer, ResourceFactory } from "./sessions.js";

// TaskError codes the agent itself reports (the same as the Python agent's; handlers choose
// their own through TaskFailure).
export const TASK_TIMEOUT = "TASK_TIMEOUT";
export const DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED";
export const CANCELLED = "CANCELLED";
export const AGENT_SHUTDOWN = "AGENT_SHUTDOWN";
export const EXECUTOR_EXCEPTION = "EXECUTOR_EXCEPTION";
export const UNKNOWN_ACTION = "UNKNOWN_ACTION";
export const INVALID_OUTPUTS = "INVALID_OUTPUTS";
export const OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE";

/** Why an attempt was stopped before its handler returned. */
export type StopReason = "cancelled" | "timeout" | "deadline" | "shutdown" | "discarded";

/** What a handler gets for one attempt. */
export interface TaskContext {
  readonly jobId: string;
  readonly taskId: string;
  readonly attempt: number;
  readonly tenant: string;
  /** The action's name: custom_action, or the built-in one in lower case ("send_mail"). */
  readonly action: string;
  readonly todo: ToDo;
  /** ToDo.params as plain JSON ({} when absent). */
  readonly params: JsonObject;
  /** Resolved inputs: for each ToDo input, the upstream task's output it references. */
  readonly inputs: JsonObject;
  /** Purpose -> credential reference; resolve them with your own secret store. */
  readonly credentialRefs: Readonly<Record<string, string>>;
  /** The job deadline, if any (the signal aborts then). */
  readonly deadline: Date | undefined;
  /**
   * Aborted when the attempt must stop: the job was cancelled (signal.reason is the caller's
   * cancel reason), the task timeout or job deadline passed, or the agent shuts down. Pass it
   * to fetch() and friends; a handler that ignores it is reported after stopGraceMs anyway.
   */
  readonly signal: AbortSignal;
  /** Best-effort progress (dropped while disconnected). percent from 0 to 100. */
  progress(percent: number | undefined, message?: string): void;
  /** ToDo.session ("" when the task has none): the tasks of a job sharing what this agent keeps. */
  readonly session: string;
  /** Files: save() uploads one as an artifact of this attempt, readInput() reads an artifact input. */
  readonly artifacts: ArtifactAccess;
  /**
   * The session's resource `name` (a browser context, a connection): made by `create` on the
   * first call of any attempt of the session, the same value for the session's later tasks on
   * this agent, disposed by `dispose` when the session is over (SessionEnded, or the agent's own
   * rules: see sessions.ts). Rejects with TaskFailure NO_SESSION in a task without a session.
   */
  sessionResource<T>(name: string, create: ResourceFactory<T>, dispose?: ResourceDisposer<T>): Promise<T>;
}

/** What the agent gives an attempt's context beyond the assignment (built on its signal). */
export type AttemptServices = Pick<TaskContext, "artifacts" | "sessionResource">;

/** A handler's outputs (a JSON object; undefined means {}). */
export type Handler = (context: TaskContext) => Promise<JsonObject | void> | JsonObject | void;

/** Thrown by a handler to fail the attempt with its own code; retryable says whether the server may retry. */
export class TaskFailure extends Error {
  override readonly name: string = "TaskFailure";
  constructor(
    readonly code: string,
    message: string,
    readonly options: { readonly retryable?: boolean; readonly details?: JsonObject } = {},
  ) {
    super(message);
  }
}

/** Identifies an attempt across streams: job, task and attempt number. */
export function attemptKey(jobId: string, taskId: string, attempt: number): string {
  return JSON.stringify([jobId, taskId, attempt]);
}

/** The registry name of a ToDo's action ("" for unspecified). */
export function actionName(todo: ToDo | undefined): string {
  if (todo === undefined || todo.action === ActionType.UNSPECIFIED) return "";
  if (todo.action === ActionType.CUSTOM) return todo.customAction;
  return (ActionType[todo.action] ?? "").toLowerCase();
}

export function taskError(
  code: string,
  message: string,
  retryable: boolean,
  reason: ErrorReason = ErrorReason.UNSPECIFIED,
  details?: JsonObject,
): TaskError {
  return create(TaskErrorSchema, {
    code,
    message,
    retryable,
    reason,
    details,
  });
}

export interface AttemptOptions {
  readonly assignment: Assignment;
  readonly handler: Handler | undefined;
  readonly stopGraceMs: number;
  readonly onProgress: (attempt: RunningAttempt, percent: number | undefined, message: string) => void;
  readonly services: (signal: AbortSignal) => AttemptServices;
}

export class RunningAttempt {
  readonly jobId: string;
  readonly taskId: string;
  readonly attempt: number;
  readonly key: string;
  readonly assignment: Assignment;
  private readonly controller = new AbortController();
  private stopped: { reason: StopReason; message: string } | undefined;
  private wakeStopped: () => void = () => {};
  private readonly stoppedPromise = new Promise<void>((resolve) => (this.wakeStopped = resolve));

  constructor(private readonly options: AttemptOptions) {
    const { assignment } = options;
    this.assignment = assignment;
    this.jobId = assignment.jobId;
    this.taskId = assignment.todo?.id ?? "";
    this.attempt = assignment.attempt;
    this.key = attemptKey(this.jobId, this.taskId, this.attempt);
  }

  get stopReason(): StopReason | undefined {
    return this.stopped?.reason;
  }

  /** Ends the attempt early: the handler's signal aborts with `message` as its reason. */
  stop(reason: StopReason, message: string): void {
    if (this.stopped !== undefined) return;
    this.stopped = { reason, message };
    this.controller.abort(message);
    this.wakeStopped();
  }

  /** Runs the handler once and returns the attempt's Result (never throws). */
  async run(): Promise<Result> {
    const { assignment, handler } = this.options;
    const todo = assignment.todo;
    const action = actionName(todo);
    if (handler === undefined) {
      return this.result({ error: taskError(UNKNOWN_ACTION, `no handler for action '${action}'`, false) });
    }
    const timers = this.armTimers(todo, assignment);
    const context: TaskContext = {
      jobId: this.jobId,
      taskId: this.taskId,
      attempt: this.attempt,
      tenant: assignment.tenant,
      action,
      todo: todo as ToDo,
      params: todo?.params ?? {},
      inputs: assignment.inputs ?? {},
      credentialRefs: { ...assignment.credentialRefs },
      deadline: assignment.deadline ? timestampDate(assignment.deadline) : undefined,
      signal: this.controller.signal,
      progress: (percent, message = "") => this.options.onProgress(this, percent, message),
      session: todo?.session ?? "",
      ...this.options.services(this.controller.signal),
    };
    const work = (async () => await handler(context))();
    try {
      const outcome = await Promise.race([
        work.then(
          (outputs) => ({ outputs: outputs ?? {} }),
          (error: unknown) => ({ error }),
        ),
        this.stoppedPromise.then(() => "stopped" as const),
      ]);
      if (outcome === "stopped") {
        // Give the handler stopGraceMs to notice its signal; its outcome no longer matters.
        await Promise.race([work.catch(() => undefined), sleep(this.options.stopGraceMs)]);
        return this.stoppedResult();
      }
      if (this.stopped !== undefined) return this.stoppedResult();
      if ("error" in outcome) return this.result({ error: handlerError(outcome.error) });
      return this.outputsResult(outcome.outputs);
    } finally {
      for (const timer of timers) clearTimeout(timer);
    }
  }

  private armTimers(todo: ToDo | undefined, assignment: Assignment): NodeJS.Timeout[] {
    const timers: NodeJS.Timeout[] = [];
    const timeout = todo?.timeout;
    if (timeout !== undefined) {
      const ms = Number(timeout.seconds) * 1000 + timeout.nanos / 1e6;
      if (ms > 0) {
        timers.push(setTimeout(() => this.stop("timeout", `the task timeout of ${ms / 1000}s passed`), ms));
      }
    }
    if (assignment.deadline !== undefined) {
      const ms = timestampDate(assignment.deadline).getTime() - Date.now();
      timers.push(setTimeout(() => this.stop("deadline", "the job deadline passed"), Math.max(0, ms)));
    }
    return timers;
  }

  private outputsResult(outputs: unknown): Result {
    if (outputs === null || typeof outputs !== "object" || Array.isArray(outputs)) {
      return this.result({ error: taskError(INVALID_OUTPUTS, "the handler's outputs are not a JSON object", false) });
    }
    // A Struct holds JSON only: what JSON.stringify would change (NaN, undefined, a Date) is refused.
    try {
      const json = JSON.stringify(outputs, (_key, value: unknown) => {
        if (typeof value === "number" && !Number.isFinite(value)) throw new Error(`${value} is not JSON`);
        return value;
      });
      return this.result({ outputs: JSON.parse(json) as JsonObject });
    } catch (error) {
      const text = `the handler's outputs are not JSON: ${String(error)}`;
      return this.result({ error: taskError(INVALID_OUTPUTS, text, false) });
    }
  }

  private stoppedResult(): Result {
    const { reason, message } = this.stopped!;
    switch (reason) {
      case "timeout":
        return this.result({ error: taskError(TASK_TIMEOUT, message, true, ErrorReason.TASK_TIMEOUT) });
      case "deadline":
        return this.result({
          error: taskError(DEADLINE_EXCEEDED, message, false, ErrorReason.JOB_DEADLINE_EXCEEDED),
        });
      case "shutdown":
        // Handed back: another agent may run it.
        return this.result({ error: taskError(AGENT_SHUTDOWN, message, true, ErrorReason.AGENT_DRAINING) });
      default:
        return this.result({ error: taskError(CANCELLED, message, false), cancelled: true });
    }
  }

  private result(outcome: { outputs?: JsonObject; error?: TaskError; cancelled?: boolean }): Result {
    return create(ResultSchema, {
      jobId: this.jobId,
      taskId: this.taskId,
      attempt: this.attempt,
      cancelled: outcome.cancelled ?? false,
      outcome:
        outcome.error !== undefined
          ? { case: "error", value: outcome.error }
          : { case: "outputs", value: outcome.outputs ?? {} },
    });
  }
}

function handlerError(error: unknown): TaskError {
  if (error instanceof TaskFailure) {
    return taskError(error.code, error.message, error.options.retryable ?? false, ErrorReason.UNSPECIFIED, error.options.details);
  }
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return taskError(EXECUTOR_EXCEPTION, text, true);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

export type { JsonObject, JsonValue };
