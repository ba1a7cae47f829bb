/**
 * Agent: an executor agent on ExecutorService.Connect, as cpa_agent/connection.py does it in
 * Python. One session at a time: hello (actions = the handlers' names, capabilities, running
 * attempts, the session it resumes) -> welcome -> credit; assignments run their handler; results
 * stay in an outbox until the server acks them and are sent again on the next session; heartbeats
 * renew the leases; reconnects back off with full jitter; drain() (SIGTERM) stops taking work,
 * waits for running attempts and unacked results, and ends. Artifacts travel on calls of their
 * own (artifacts.ts); what handlers keep per task session is released by sessions.ts.
 */
import { EventEmitter } from "node:events";
import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { fullJitterBackoffMs, delay } from "../backoff.js";
import { CpaError } from "../errors.js";
import { ErrorReason } from "../gen/cpa/common/v1/error_pb.js";
import {
  ConnectRequestSchema,
  ExecutorService,
  HelloSchema,
  RunningAttemptSchema,
  type Assignment,
  type ConnectRequest,
  type ConnectResponse,
  type Result,
  type Welcome,
} from "../gen/cpa/executor/v1/executor_service_pb.js";
import { createTransport, type ConnectionOptions } from "../transport.js";
import {
  OUTPUT_TOO_LARGE,
  RunningAttempt,
  actionName,
  attemptKey,
  taskError,
  type Handler,
} from "./attempt.js";
import { AttemptArtifacts, type ArtifactLink } from "./artifacts.js";
import { RequestQueue } from "./queue.js";
import {
  SESSION_ATTEMPT_CANCELLED,
  SESSION_ATTEMPT_NOT_CURRENT,
  SessionCloser,
  type SessionEnd,
  type SessionEndedHook,
} from "./sessions.js";

export const VERSION = "ts-0.1.0";
// AssignmentAck.reason when the agent declines (the server queues the task again).
export const DECLINE_AGENT_DRAINING = "AGENT_DRAINING";
export const DECLINE_SERVER_DRAINING = "SERVER_DRAINING";
export const DECLINE_NO_FREE_SLOT = "NO_FREE_SLOT";
// The stream counts as dead after this many heartbeat intervals without a server message.
const DEAD_AFTER_HEARTBEAT_INTERVALS = 3;
// What the report id adds to a report: a one-byte tag and a varint of at most 10 bytes.
const REPORT_ID_BYTES = 11;
// After the agent half-closes its stream, how long the server gets to end it cleanly.
const HALF_CLOSE_GRACE_MS = 1_000;
/** Answers to a hello no reconnect can change (AGENT_ID_IN_USE and UNAUTHENTICATED can). */
const HELLO_REFUSALS: ReadonlySet<Code> = new Set([Code.InvalidArgument, Code.PermissionDenied]);

export interface AgentOptions extends ConnectionOptions {
  /** Stable across reconnects and restarts (a host name, a configured id). */
  readonly agentId: string;
  readonly name?: string;
  /** Tenant served; must match the credential's. */
  readonly tenantName?: string;
  /** Action name -> handler. The names are the actions the hello offers. */
  readonly handlers: Readonly<Record<string, Handler>>;
  /** Capabilities offered beyond the actions (ToDo.required_capabilities). */
  readonly capabilities?: readonly string[];
  readonly labels?: Readonly<Record<string, string>>;
  /** Attempts run at once (the credit granted). Default 4. */
  readonly slots?: number;
  readonly reconnectInitialMs?: number;
  readonly reconnectMaxMs?: number;
  /** How long a welcome may take before the connect counts as failed. Default 10 s. */
  readonly connectTimeoutMs?: number;
  /** How long a drain waits for running attempts before handing them back. Default 30 s. */
  readonly drainTimeoutMs?: number;
  /** How long a stopped handler gets to notice its signal before the attempt is reported. Default 5 s. */
  readonly stopGraceMs?: number;
  /** Request budget before a welcome says one (Welcome.max_report_bytes). Default 4 MiB. */
  readonly maxReportBytes?: number;
  /**
   * Called when a task session (ToDo.session) is over for this agent, after its
   * ctx.sessionResource() values were disposed: release what you keep for it (sessions.ts).
   */
  readonly onSessionEnded?: SessionEndedHook;
  readonly log?: (message: string) => void;
}

type RequestKind = MessageInitShape<typeof ConnectRequestSchema>["kind"];
type HelloInit = MessageInitShape<typeof HelloSchema>;

/** One stream: its queue, report ids, and what the server said on it. */
class Session {
  readonly requests = new RequestQueue<ConnectRequest>();
  readonly abort = new AbortController();
  welcome: Welcome | undefined;
  serverDraining = false;
  serverDrainDeadline: Date | undefined;
  lastReceivedMs = Date.now();
  /** Server messages received after the welcome (proof that the stream lives). */
  received = 0;
  /** Results sent on this stream and not yet acked: report id -> attempt key. */
  readonly pendingResults = new Map<bigint, string>();
  private lastReportId = 0n;

  send(kind: RequestKind): void {
    this.requests.push(create(ConnectRequestSchema, { kind }));
  }

  /** Half-closes the stream; the server ends it, or it is cut after HALF_CLOSE_GRACE_MS. */
  end(): void {
    this.requests.close();
    setTimeout(() => this.abort.abort("the server did not end the stream"), HALF_CLOSE_GRACE_MS).unref();
  }

  sendReport(kind: RequestKind): bigint {
    this.lastReportId += 1n;
    this.requests.push(create(ConnectRequestSchema, { reportId: this.lastReportId, kind }));
    return this.lastReportId;
  }
}

/**
 * Events: "changed" on every state change (tests wait on it), "connected" (session id) per welcome.
 */
export class Agent extends EventEmitter {
  private readonly client: Client<typeof ExecutorService>;
  private readonly attempts = new Map<string, RunningAttempt>();
  /** Results until the server acks them (accepted or refused), in the order they ended. */
  private readonly outbox = new Map<string, Result>();
  private session: Session | undefined;
  private lastSessionId = "";
  private drainReason: string | undefined;
  private stopping = false;
  private readonly stopController = new AbortController();
  private readonly taskSessions: SessionCloser;
  /** Sessions welcomed so far. */
  sessionsStarted = 0;

  constructor(private readonly options: AgentOptions) {
    super();
    // until() waiters are many and short-lived: no leak warning for them.
    this.setMaxListeners(0);
    this.client = createClient(ExecutorService, createTransport(options));
    this.taskSessions = new SessionCloser(options.onSessionEnded, (message) => this.log(message), () => this.changed());
  }

  /** Every task session closed so far, with why (oldest first). */
  get closedSessions(): readonly SessionEnd[] {
    return this.taskSessions.closed;
  }

  get runningAttempts(): string[] {
    return [...this.attempts.keys()];
  }

  get unackedResults(): Result[] {
    return [...this.outbox.values()];
  }

  get connected(): boolean {
    return this.session?.welcome !== undefined;
  }

  get draining(): boolean {
    return this.drainReason !== undefined;
  }

  /** Resolves when predicate() holds, re-checked on every change. */
  async until(predicate: () => boolean): Promise<void> {
    while (!predicate()) await new Promise((resolve) => this.once("changed", resolve));
  }

  /** Stops taking work; run() ends once attempts ended and results were acked (or drainTimeoutMs passed). */
  drain(reason = "drain requested"): void {
    if (this.drainReason !== undefined) return;
    this.drainReason = reason;
    this.log(`draining: ${reason}`);
    this.session?.send({ case: "drain", value: { reason } });
    void this.finishDrain();
    this.changed();
  }

  /**
   * Stops at once: the stream is cut, running handlers are aborted and nothing more is reported
   * (the server finds their attempts lost when their leases end, and retries them).
   */
  stopNow(): void {
    this.stopping = true;
    this.stopController.abort();
    this.session?.abort.abort("the agent stops now");
    this.changed();
  }

  /** Drains on SIGTERM and SIGINT, stops at once on a second one; returns a function removing the handlers. */
  handleSignals(): () => void {
    const onSignal = (signal: NodeJS.Signals) => {
      if (this.draining) this.stopNow();
      else this.drain(`received ${signal}`);
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
    return () => {
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
    };
  }

  /**
   * Runs sessions until a drain completes. Rejects with the CpaError when the scheduler refuses
   * the hello itself (INVALID_ARGUMENT: a field over its bounds; PERMISSION_DENIED: an action
   * the credential does not allow, another tenant): a configuration no reconnect can fix.
   */
  async run(): Promise<void> {
    let failures = 0;
    let refused: CpaError | undefined;
    while (!this.stopping) {
      const session = new Session();
      try {
        await this.runSession(session);
      } catch (error) {
        const failure = CpaError.from(error);
        this.log(`stream ended: ${failure instanceof Error ? failure.message : String(failure)}`);
        if (session.welcome === undefined && failure instanceof CpaError && HELLO_REFUSALS.has(failure.code)) {
          refused = failure;
        }
      } finally {
        session.abort.abort();
        session.requests.close();
        if (this.session === session) this.session = undefined;
        this.changed();
      }
      if (session.welcome !== undefined) failures = 0;
      if (this.stopping || refused !== undefined) break;
      const waitMs = fullJitterBackoffMs(
        failures,
        this.options.reconnectInitialMs ?? 200,
        this.options.reconnectMaxMs ?? 10_000,
      );
      failures += 1;
      await delay(waitMs, this.stopController.signal);
    }
    for (const attempt of this.attempts.values()) attempt.stop("shutdown", "the agent stopped");
    await this.taskSessions.stop();
    if (refused !== undefined) throw refused;
  }

  // --- one session ----------------------------------------------------------------------------

  private async runSession(session: Session): Promise<void> {
    const responses = this.client.connect(session.requests, { signal: session.abort.signal });
    session.send({ case: "hello", value: this.hello() });
    const iterator = responses[Symbol.asyncIterator]();
    const connectTimeoutMs = this.options.connectTimeoutMs ?? 10_000;
    const noWelcome = setTimeout(() => session.abort.abort("no welcome in time"), connectTimeoutMs);
    const first = await iterator.next().finally(() => clearTimeout(noWelcome));
    if (first.done || first.value.kind.case !== "welcome") {
      throw new Error(`expected a welcome, got ${first.done ? "the end of the stream" : first.value.kind.case}`);
    }
    this.onWelcome(session, first.value.kind.value);
    const heartbeat = this.startHeartbeats(session);
    const onStop = () => session.end();
    this.stopController.signal.addEventListener("abort", onStop);
    if (this.stopController.signal.aborted) onStop();
    try {
      for (let next = await iterator.next(); !next.done; next = await iterator.next()) {
        session.lastReceivedMs = Date.now();
        session.received += 1;
        this.emit("received");
        this.dispatch(session, next.value);
        this.endSessionIfDrained(session);
      }
    } finally {
      clearInterval(heartbeat);
      this.stopController.signal.removeEventListener("abort", onStop);
    }
  }

  private startHeartbeats(session: Session): NodeJS.Timeout {
    const interval = session.welcome?.heartbeatInterval;
    const intervalMs = interval ? Number(interval.seconds) * 1000 + interval.nanos / 1e6 : 10_000;
    return setInterval(() => {
      const silentMs = Date.now() - session.lastReceivedMs;
      if (silentMs >= DEAD_AFTER_HEARTBEAT_INTERVALS * intervalMs) {
        session.abort.abort(`nothing from the server for ${silentMs} ms`);
        return;
      }
      session.send({ case: "heartbeat", value: { runningAttempts: this.runningProtos() } });
      this.endSessionIfDrained(session);
    }, Math.max(intervalMs, 10));
  }

  /** After a ServerDrain: ends the stream (to reconnect elsewhere) once idle or past its deadline. */
  private endSessionIfDrained(session: Session): void {
    if (!session.serverDraining) return;
    const pastDeadline = session.serverDrainDeadline !== undefined && session.serverDrainDeadline.getTime() <= Date.now();
    if (this.idle() || pastDeadline) session.end();
  }

  private hello(): HelloInit {
    const options = this.options;
    return {
      agentId: options.agentId,
      name: options.name ?? options.agentId,
      tenant: options.tenantName ?? options.tenant ?? "",
      capabilities: {
        actions: Object.keys(options.handlers).sort(),
        capabilities: [...(options.capabilities ?? [])].sort(),
        labels: { ...(options.labels ?? {}) },
        slots: this.slots(),
      },
      runningAttempts: this.runningProtos(),
      version: VERSION,
      acceptsBatches: true,
      resumeSessionId: this.lastSessionId,
    };
  }

  private runningProtos() {
    return [...this.attempts.values()].map((attempt) =>
      create(RunningAttemptSchema, { jobId: attempt.jobId, taskId: attempt.taskId, attempt: attempt.attempt }),
    );
  }

  // --- messages from the server -----------------------------------------------------------------

  private onWelcome(session: Session, welcome: Welcome): void {
    session.welcome = welcome;
    this.lastSessionId = welcome.sessionId;
    const adopted = new Set(welcome.adoptedAttempts.map((a) => attemptKey(a.jobId, a.taskId, a.attempt)));
    for (const key of [...this.attempts.keys()]) {
      if (!adopted.has(key)) this.discard(key, "not adopted by the server");
    }
    this.session = session;
    this.sessionsStarted += 1;
    this.log(`connected: session ${welcome.sessionId} on replica ${welcome.replicaId}`);
    if (this.drainReason !== undefined) session.send({ case: "drain", value: { reason: this.drainReason } });
    for (const [key, result] of this.outbox) this.sendResult(session, key, result);
    this.sendCredit(session, this.freeSlots());
    this.emit("connected", welcome.sessionId);
    this.changed();
  }

  private dispatch(session: Session, response: ConnectResponse): void {
    const kind = response.kind;
    switch (kind.case) {
      case "batch":
        for (const inner of kind.value.responses) {
          if (inner.kind.case !== "batch" && inner.kind.case !== "welcome") this.dispatch(session, inner);
        }
        return;
      case "assignment":
        return this.onAssignment(session, kind.value);
      case "cancel": {
        const key = attemptKey(kind.value.jobId, kind.value.taskId, kind.value.attempt);
        this.attempts.get(key)?.stop("cancelled", kind.value.reason || "cancelled by the scheduler");
        return;
      }
      case "reportAck": {
        const key = session.pendingResults.get(kind.value.reportId);
        if (key === undefined) return; // a progress report, or a result acked already
        session.pendingResults.delete(kind.value.reportId);
        if (!kind.value.accepted) this.log(`result of ${key} refused: ${ErrorReason[kind.value.reason]}`);
        this.outbox.delete(key);
        this.changed();
        return;
      }
      case "heartbeatAck": {
        let freed = 0;
        for (const stale of kind.value.staleAttempts) {
          const key = attemptKey(stale.jobId, stale.taskId, stale.attempt);
          if (this.attempts.has(key)) {
            this.discard(key, "no longer current at the server");
            freed += 1;
          }
        }
        // No result will carry these slots back, so the credit goes now.
        this.sendCredit(session, freed);
        return;
      }
      case "drain":
        this.log(`the server drains: ${kind.value.reason}`);
        session.serverDraining = true;
        session.serverDrainDeadline = kind.value.deadline ? timestampDate(kind.value.deadline) : undefined;
        this.changed();
        return;
      case "callForProposals": {
        const todo = kind.value.todo;
        const available =
          this.mayTakeWork(session) && this.freeSlots() > 0 && actionName(todo) in this.options.handlers;
        session.send({
          case: "offer",
          value: { cfpId: kind.value.cfpId, available, cost: available ? this.attempts.size : 0 },
        });
        return;
      }
      case "sessionEnded":
        this.taskSessions.close(kind.value.jobId, kind.value.session, kind.value.reason || "ended");
        return;
      default:
        return; // proposal_decision: nothing held for it here
    }
  }

  private onAssignment(session: Session, assignment: Assignment): void {
    const key = attemptKey(assignment.jobId, assignment.todo?.id ?? "", assignment.attempt);
    if (this.attempts.has(key) || this.outbox.has(key)) return; // a redelivery: never run twice
    const decline = this.drainReason !== undefined
      ? DECLINE_AGENT_DRAINING
      : session.serverDraining
        ? DECLINE_SERVER_DRAINING
        : this.freeSlots() === 0
          ? DECLINE_NO_FREE_SLOT
          : "";
    if (decline !== "") {
      // Acceptance needs no message; only a decline is sent.
      session.send({
        case: "assignmentAck",
        value: { jobId: assignment.jobId, taskId: assignment.todo?.id ?? "", attempt: assignment.attempt, accepted: false, reason: decline },
      });
      return;
    }
    this.start(assignment);
  }

  // --- attempts ---------------------------------------------------------------------------------

  private start(assignment: Assignment): void {
    const { jobId } = assignment;
    const taskSession = assignment.todo?.session ?? "";
    const attempt = new RunningAttempt({
      assignment,
      handler: this.options.handlers[actionName(assignment.todo)],
      stopGraceMs: this.options.stopGraceMs ?? 5_000,
      onProgress: (running, percent, message) => this.sendProgress(running, percent, message),
      services: (signal) => ({
        artifacts: new AttemptArtifacts({
          client: this.client,
          jobId,
          taskId: assignment.todo?.id ?? "",
          attempt: assignment.attempt,
          link: (linkSignal, cut) => this.link(linkSignal, cut),
          inputs: assignment.inputArtifacts,
          signal,
        }),
        sessionResource: (name, create, dispose) => this.taskSessions.resource(jobId, taskSession, name, create, dispose),
      }),
    });
    this.attempts.set(attempt.key, attempt);
    this.taskSessions.opened(jobId, taskSession);
    this.changed();
    // A fresh resource of the session never races the dispose of the last one.
    const ran = this.taskSessions.waitClosed(jobId, taskSession).then(() => attempt.run());
    void ran.then((result) => {
      if (attempt.stopReason === "cancelled") {
        // The job is being stopped: what the session holds is not needed any more; a later
        // task of it starts afresh.
        this.taskSessions.close(jobId, taskSession, SESSION_ATTEMPT_CANCELLED);
      }
      if (this.attempts.get(attempt.key) !== attempt) return; // discarded: never reported
      this.attempts.delete(attempt.key);
      this.outbox.set(attempt.key, result);
      // The result hands the slot back to the server: no credit needed.
      if (this.session !== undefined) this.sendResult(this.session, attempt.key, result);
      this.changed();
    });
  }

  private discard(key: string, why: string): void {
    const attempt = this.attempts.get(key);
    if (attempt === undefined) return;
    this.attempts.delete(key);
    this.log(`discarding ${key}: ${why}`);
    attempt.stop("discarded", why);
    // Its session may have moved to another agent, or the job ended, meanwhile.
    this.taskSessions.close(attempt.jobId, attempt.assignment.todo?.session ?? "", SESSION_ATTEMPT_NOT_CURRENT);
    this.changed();
  }

  private sendResult(session: Session, key: string, result: Result): void {
    let kind: RequestKind = { case: "result", value: result };
    const size = toBinary(ConnectRequestSchema, create(ConnectRequestSchema, { kind })).length + REPORT_ID_BYTES;
    const limit = this.maxReportBytes(session);
    if (size > limit) {
      // Sent as it is, it would end the stream, and again after every reconnect.
      const message = `the result of attempt ${result.attempt} is ${size} bytes; the server takes at most ${limit}`;
      const replaced = { ...result, cancelled: result.cancelled, outcome: { case: "error" as const, value: taskError(OUTPUT_TOO_LARGE, message, false, ErrorReason.OUTPUT_TOO_LARGE) } };
      this.outbox.set(key, replaced);
      kind = { case: "result", value: replaced };
    }
    session.pendingResults.set(session.sendReport(kind), key);
  }

  private sendProgress(attempt: RunningAttempt, percent: number | undefined, message: string): void {
    const session = this.session;
    // Best effort: progress made while disconnected is dropped, never re-sent.
    if (session?.welcome === undefined || this.attempts.get(attempt.key) !== attempt) return;
    session.sendReport({
      case: "progress",
      value: { jobId: attempt.jobId, taskId: attempt.taskId, attempt: attempt.attempt, percent, message },
    });
  }

  private sendCredit(session: Session, slots: number): void {
    if (slots > 0 && this.mayTakeWork(session)) session.send({ case: "credit", value: { slots } });
  }

  private async finishDrain(): Promise<void> {
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), this.options.drainTimeoutMs ?? 30_000);
    const expired = new Promise<void>((resolve) => timeout.signal.addEventListener("abort", () => resolve()));
    await Promise.race([this.until(() => this.idle()), expired]);
    clearTimeout(timer);
    if (!this.idle()) {
      this.log(`drain timeout: handing back ${this.attempts.size} attempts`);
      for (const attempt of this.attempts.values()) attempt.stop("shutdown", `the agent shut down (${this.drainReason})`);
      const grace = delay(5_000);
      await Promise.race([this.until(() => this.idle()), grace]);
    }
    this.stopping = true;
    this.stopController.abort();
    this.changed();
  }

  /**
   * The welcomed session's link for artifact calls, waiting for a welcome while there is none.
   * After a call on `cut` was cut, that session only once the server spoke on it since (a reset
   * connection fails the call before the stream notices; the session would be gone).
   */
  private async link(signal: AbortSignal, cut?: ArtifactLink): Promise<ArtifactLink> {
    const cutSession = cut !== undefined && this.session?.welcome?.sessionId === cut.sessionId ? this.session : undefined;
    const heardBefore = cutSession?.received ?? 0;
    for (;;) {
      signal.throwIfAborted();
      const session = this.session;
      const welcome = session?.welcome;
      const usable =
        welcome !== undefined &&
        (cut === undefined || welcome.sessionId !== cut.sessionId || (session !== undefined && session === cutSession && session.received > heardBefore));
      if (usable) return { sessionId: welcome.sessionId, tenant: this.options.tenantName ?? this.options.tenant ?? "" };
      await new Promise<void>((resolve) => {
        const wake = () => {
          this.off("changed", wake);
          this.off("received", wake);
          signal.removeEventListener("abort", wake);
          resolve();
        };
        this.on("changed", wake);
        this.on("received", wake);
        signal.addEventListener("abort", wake);
      });
    }
  }

  private idle(): boolean {
    return this.attempts.size === 0 && this.outbox.size === 0;
  }

  private slots(): number {
    return this.options.slots ?? 4;
  }

  private freeSlots(): number {
    return Math.max(0, this.slots() - this.attempts.size);
  }

  private mayTakeWork(session: Session): boolean {
    return this.drainReason === undefined && !session.serverDraining;
  }

  private maxReportBytes(session: Session): number {
    const fromServer = Number(session.welcome?.maxReportBytes ?? 0n);
    return fromServer > 0 ? fromServer : (this.options.maxReportBytes ?? 4 * 1024 * 1024);
  }

  private changed(): void {
    this.emit("changed");
  }

  private log(message: string): void {
    (this.options.log ?? (() => {}))(`agent ${this.options.agentId}: ${message}`);
  }
}
