/**
 * The agent's side of task sessions (ToDo.session), as cpa_agent/sessions.py does it in Python:
 * releasing what a handler keeps for a session (a browser context per (job, session)) once the
 * session is over for this agent:
 * - the scheduler says so (ConnectResponse.session_ended: the session's last task ended, the job
 *   ended, or the session moved to another agent after this one was lost);
 * - the agent learns that its attempt of the session is no longer current (stale in a
 *   HeartbeatAck, not adopted at reconnect) or was cancelled: the session may have moved, or the
 *   job been stopped, while this agent did not hear the SessionEnded;
 * - the agent stops: whatever it still keeps goes (Python's executors' aclose()).
 *
 * What is released: the session's resources (ctx.sessionResource, disposed newest first), then
 * the author's onSessionEnded hook is called. A close is fire-and-forget for the stream (it never
 * blocks it), one at a time per session, and never crashes the agent (a failure is logged). A
 * session closed twice, or one this agent never held, just calls the hook again: the hook must
 * be idempotent, as Python's close_session is. An attempt of a session waits for a close of that
 * session still under way before it starts, so a fresh resource never races the old one's dispose.
 */
import { TaskFailure } from "./attempt.js";

/** Why the agent closed a session on its own (SessionEnd.reason besides the scheduler's). */
export const SESSION_ATTEMPT_CANCELLED = "attempt_cancelled";
export const SESSION_ATTEMPT_NOT_CURRENT = "attempt_not_current";
export const SESSION_AGENT_STOPPED = "agent_stopped";
/** TaskError code of ctx.sessionResource() in a task without a session. */
export const NO_SESSION = "NO_SESSION";
// How long the agent waits, when it stops, for closes under way.
const CLOSE_GRACE_MS = 10_000;

/** A session that is over for this agent. */
export interface SessionEnd {
  readonly jobId: string;
  /** ToDo.session. */
  readonly session: string;
  /**
   * The scheduler's SessionEnded.reason ("completed": its last task ended; "job_ended": the job
   * ended or is being stopped; "restarted": the session moved to another agent), or the agent's
   * own: "attempt_cancelled", "attempt_not_current" (stale, or not adopted at reconnect),
   * "agent_stopped".
   */
  readonly reason: string;
}

/** Called once per close of a session (see the module's doc); errors are logged, never fatal. */
export type SessionEndedHook = (ended: SessionEnd) => void | Promise<void>;

/** Creates a session's resource once, on the first call of any attempt of the session. */
export type ResourceFactory<T> = () => T | Promise<T>;
/** Releases a session's resource when the session is over for this agent. */
export type ResourceDisposer<T> = (value: T) => void | Promise<void>;

interface Resource {
  readonly value: Promise<unknown>;
  readonly dispose: ResourceDisposer<unknown> | undefined;
}

function sessionKey(jobId: string, session: string): string {
  return JSON.stringify([jobId, session]);
}

export class SessionCloser {
  /** Closes under way, by session: each waits for the one before it. */
  private readonly closing = new Map<string, Promise<void>>();
  /** Each session's resources by name, in creation order. */
  private readonly resources = new Map<string, Map<string, Resource>>();
  /** Sessions this agent ran an attempt of and has not closed since. */
  private readonly open = new Map<string, { jobId: string; session: string }>();
  /** Every close carried out (oldest first; for logs and tests). */
  readonly closed: SessionEnd[] = [];

  constructor(
    private readonly hook: SessionEndedHook | undefined,
    private readonly log: (message: string) => void,
    private readonly onClosed: () => void,
  ) {}

  /** An attempt of `session` starts here: the agent closes it when it stops, if nothing else did. */
  opened(jobId: string, session: string): void {
    if (session) this.open.set(sessionKey(jobId, session), { jobId, session });
  }

  /** Closes `session` of `jobId` in the background (never blocks; "" is no session). */
  close(jobId: string, session: string, reason: string): void {
    if (!session) return;
    const key = sessionKey(jobId, session);
    this.open.delete(key);
    // What the session holds now; a resource made after this belongs to its next life.
    const resources = [...(this.resources.get(key)?.values() ?? [])];
    this.resources.delete(key);
    const closing = this.carryOut(this.closing.get(key), { jobId, session, reason }, resources);
    this.closing.set(key, closing);
    void closing.then(() => {
      if (this.closing.get(key) === closing) this.closing.delete(key);
      this.onClosed();
    });
  }

  /** Resolves once no close of `session` of `jobId` is under way. */
  async waitClosed(jobId: string, session: string): Promise<void> {
    const key = sessionKey(jobId, session);
    for (let closing = this.closing.get(key); closing !== undefined; closing = this.closing.get(key)) await closing;
  }

  /**
   * The session's resource `name`: made by `create` on the first call (concurrent calls share
   * it), disposed by `dispose` when the session is over for this agent.
   */
  resource<T>(jobId: string, session: string, name: string, create: ResourceFactory<T>, dispose?: ResourceDisposer<T>): Promise<T> {
    if (!session) {
      return Promise.reject(new TaskFailure(NO_SESSION, `the task has no session (ToDo.session) to keep '${name}' for`));
    }
    const key = sessionKey(jobId, session);
    let named = this.resources.get(key);
    if (named === undefined) this.resources.set(key, (named = new Map()));
    const existing = named.get(name);
    if (existing !== undefined) return existing.value as Promise<T>;
    const resource: Resource = {
      value: (async () => await create())(),
      dispose: dispose as ResourceDisposer<unknown> | undefined,
    };
    named.set(name, resource);
    const owner = named;
    // A failed creation is not kept: the next call tries again.
    resource.value.catch(() => {
      if (owner.get(name) === resource) owner.delete(name);
    });
    return resource.value as Promise<T>;
  }

  /** The agent stops: closes every session it still holds, and waits (bounded) for the closes. */
  async stop(): Promise<void> {
    const held = new Map(this.open);
    for (const key of this.resources.keys()) {
      const [jobId, session] = JSON.parse(key) as [string, string];
      held.set(key, { jobId, session });
    }
    for (const { jobId, session } of held.values()) this.close(jobId, session, SESSION_AGENT_STOPPED);
    if (this.closing.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_GRACE_MS)));
    await Promise.race([Promise.all(this.closing.values()), grace]);
    clearTimeout(timer);
  }

  private async carryOut(previous: Promise<void> | undefined, end: SessionEnd, resources: Resource[]): Promise<void> {
    if (previous !== undefined) await previous; // one close at a time per session
    this.log(`closing session '${end.session}' of job ${end.jobId}: ${end.reason}`);
    for (const resource of resources.reverse()) {
      try {
        const value = await resource.value;
        await resource.dispose?.(value);
      } catch (error) {
        this.log(`disposing a resource of session '${end.session}' of job ${end.jobId} failed: ${String(error)}`);
      }
    }
    try {
      await this.hook?.(end);
    } catch (error) {
      this.log(`onSessionEnded for session '${end.session}' of job ${end.jobId} failed: ${String(error)}`);
    }
    this.closed.push(end);
  }
}
