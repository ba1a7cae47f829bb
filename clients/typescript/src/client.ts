/**
 * SchedulerClient: a thin typed wrapper over cpa.scheduler.v1.SchedulerService. Every method
 * throws CpaError on failure; watch() resumes a dropped stream from the last event it yielded;
 * listJobs() walks the pages. For RPCs without a wrapper, use `client.raw` (the generated client).
 * This module imports no transport: SchedulerClient (node.ts: gRPC over HTTP/2) and the browser's
 * (web.ts: gRPC-web) are this class with their transport.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { downloadBytes, type ArtifactData } from "./artifacts.js";
import { fullJitterBackoffMs, delay } from "./backoff.js";
import { CpaError, decodeErrors } from "./errors.js";
import type { Artifact } from "./gen/cpa/common/v1/artifact_pb.js";
import type { JobEvent } from "./gen/cpa/scheduler/v1/job_event_pb.js";
import {
  JobSpecSchema,
  JobView,
  type Job,
  type JobSpec,
} from "./gen/cpa/scheduler/v1/job_pb.js";
import { SchedulerService } from "./gen/cpa/scheduler/v1/scheduler_service_pb.js";

export type JobSpecInit = MessageInitShape<typeof JobSpecSchema>;

export interface ScheduleOptions {
  /**
   * Idempotency key (AIP-155): the same id of the same tenant returns the job it made first.
   * Defaults to a fresh UUID, so a retried call can never submit twice; pass "" for none.
   */
  readonly requestId?: string;
  readonly view?: JobView;
  readonly signal?: AbortSignal;
}

export interface WatchOptions {
  /** Yield only events after this sequence (0: from the first). */
  readonly afterSequence?: bigint;
  /** Stops the watch: the iterator ends (no error). */
  readonly signal?: AbortSignal;
  /** Consecutive failed reconnects before watch() throws (default 8). */
  readonly maxReconnects?: number;
  /** Backoff between reconnects (full jitter): first cap and largest cap, ms. */
  readonly reconnectInitialMs?: number;
  readonly reconnectMaxMs?: number;
  /** Called before each reconnect with the error that ended the stream (logging, tests). */
  readonly onReconnect?: (error: CpaError, afterSequence: bigint) => void;
}

export interface ListJobsOptions {
  /** AIP-160 filter (see ListJobsRequest.filter), e.g. `state = RUNNING AND labels.team = "ops"`. */
  readonly filter?: string;
  /** Jobs per page (the server caps it). */
  readonly pageSize?: number;
  readonly view?: JobView;
  readonly signal?: AbortSignal;
}

/**
 * Codes after which a watch reconnects: the stream was cut (a replica stopped, a proxy or the
 * network dropped it; a reset HTTP/2 stream reads as CANCELLED, so that counts too unless the
 * caller's own signal aborted). Anything else (NOT_FOUND, PERMISSION_DENIED) is the answer.
 */
const RESUMABLE_CODES: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.Canceled,
  Code.Internal,
  Code.Unknown,
  Code.Aborted,
]);

export class SchedulerClientBase {
  /** The generated Connect client, for the RPCs this class does not wrap. */
  readonly raw: Client<typeof SchedulerService>;

  constructor(transport: Transport) {
    this.raw = createClient(SchedulerService, transport);
  }

  /** Submits a job; resolves to the job (the existing one when requestId was seen before). */
  async scheduleJob(spec: JobSpecInit | JobSpec, options: ScheduleOptions = {}): Promise<Job> {
    const response = await decodeErrors(() =>
      this.raw.scheduleJob(
        {
          spec: create(JobSpecSchema, spec as JobSpecInit),
          requestId: options.requestId ?? crypto.randomUUID(),
          view: options.view ?? JobView.UNSPECIFIED,
        },
        { signal: options.signal },
      ),
    );
    return required(response.job, "ScheduleJobResponse.job");
  }

  async getJob(jobId: string, view: JobView = JobView.FULL): Promise<Job> {
    const response = await decodeErrors(() => this.raw.getJob({ jobId, view }));
    return required(response.job, "GetJobResponse.job");
  }

  /** Asks the job to stop; `reason` is recorded and handed to the agents running its tasks. */
  async cancelJob(jobId: string, reason = ""): Promise<Job> {
    const response = await decodeErrors(() => this.raw.cancelJob({ jobId, reason }));
    return required(response.job, "CancelJobResponse.job");
  }

  /** Every job the filter matches, page by page (next_page_token) as the caller iterates. */
  async *listJobs(options: ListJobsOptions = {}): AsyncGenerator<Job, void, undefined> {
    let pageToken = "";
    do {
      const page = await decodeErrors(() =>
        this.raw.listJobs(
          {
            filter: options.filter ?? "",
            pageSize: options.pageSize ?? 0,
            view: options.view ?? JobView.UNSPECIFIED,
            pageToken,
          },
          { signal: options.signal },
        ),
      );
      yield* page.jobs;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  /** The artifacts the job's tasks stored (failed attempts' included), in task order; with `taskId` only that task's. Every page (next_page_token). */
  async listArtifacts(jobId: string, options: { readonly taskId?: string; readonly pageSize?: number } = {}): Promise<Artifact[]> {
    const found: Artifact[] = [];
    let pageToken = "";
    do {
      const page = await decodeErrors(() =>
        this.raw.listArtifacts({ jobId, taskId: options.taskId ?? "", pageSize: options.pageSize ?? 0, pageToken }),
      );
      found.push(...page.artifacts);
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    return found;
  }

  /**
   * An artifact's metadata and bytes in memory, checked against its size and sha256
   * (ArtifactCheckError when they differ). The call has no deadline of its own: a large
   * artifact takes as long as it takes; `signal` stops it.
   */
  async readArtifact(jobId: string, artifactId: string, options: { readonly signal?: AbortSignal } = {}): Promise<ArtifactData> {
    return await decodeErrors(() =>
      downloadBytes(this.raw.downloadArtifact({ jobId, artifactId }, { signal: options.signal })),
    );
  }

  /**
   * The job's events in sequence order, live, ending after the terminal one. When the stream
   * drops, it reconnects (with backoff) asking for the events after the last one yielded, so
   * the caller sees no gap and no duplicate. Heartbeats are not yielded.
   */
  async *watch(jobId: string, options: WatchOptions = {}): AsyncGenerator<JobEvent, void, undefined> {
    // The calls' own signal: the caller's, and aborted when the caller stops iterating (a break),
    // or the server stream would stay open (and keep Node's event loop alive).
    const calls = new AbortController();
    const forward = () => calls.abort(options.signal?.reason);
    options.signal?.addEventListener("abort", forward);
    if (options.signal?.aborted) forward();
    try {
      yield* this.watchEvents(jobId, options, calls.signal);
    } finally {
      options.signal?.removeEventListener("abort", forward);
      calls.abort();
    }
  }

  private async *watchEvents(jobId: string, options: WatchOptions, signal: AbortSignal): AsyncGenerator<JobEvent, void, undefined> {
    let lastSequence = options.afterSequence ?? 0n;
    let failures = 0;
    const maxReconnects = options.maxReconnects ?? 8;
    while (!signal.aborted) {
      try {
        const stream = this.raw.watchJob({ jobId, afterSequence: lastSequence }, { signal });
        for await (const response of stream) {
          const event = response.event;
          // A replay never goes back, but a reconnect must not repeat what was yielded.
          if (event === undefined || event.sequence <= lastSequence) continue;
          lastSequence = event.sequence;
          failures = 0;
          yield event;
          if (event.terminal) return;
        }
        // The server ended the stream before the terminal event (it drains): resume.
        throw new ConnectError("the watch ended before the job did", Code.Unavailable);
      } catch (error) {
        if (signal.aborted) return;
        const failure = CpaError.from(error);
        if (!(failure instanceof CpaError) || !RESUMABLE_CODES.has(failure.code)) throw failure;
        if (failures >= maxReconnects) throw failure;
        options.onReconnect?.(failure, lastSequence);
        await delay(
          fullJitterBackoffMs(failures, options.reconnectInitialMs ?? 100, options.reconnectMaxMs ?? 5_000),
          signal,
        );
        failures += 1;
      }
    }
  }
}

function required<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`the server's answer has no ${what}`);
  return value;
}
