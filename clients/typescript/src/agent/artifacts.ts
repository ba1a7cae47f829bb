/**
 * An attempt's artifacts, as cpa_agent/artifacts.py does them in Python: files the handler
 * produces go to the scheduler over ExecutorService.UploadArtifact, its artifact inputs come
 * back over DownloadArtifact, both on the agent's transport as calls of their own, never on the
 * Connect stream (docs/adr/0002-artifacts.md). An upload names the agent's current session
 * (it proves which agent uploads); while the agent is disconnected a call waits for the next
 * welcome (the attempt's signal bounds the wait), and a call cut by a reconnect is made again
 * on the new session, which adopted the attempt. The server records an uploaded artifact on the
 * task by itself: the Result names none (Result.artifacts is ignored).
 */
import { readFile } from "node:fs/promises";
import { basename } from "node:path";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { JsonObject, MessageInitShape } from "@bufbuild/protobuf";
import { ArtifactCheckError, downloadBytes, sha256Hex, split, type ArtifactData } from "../artifacts.js";
import { CpaError } from "../errors.js";
import { cut } from "../retry.js";
import type { Artifact } from "../gen/cpa/common/v1/artifact_pb.js";
import { ExecutorService, type UploadArtifactHeaderSchema } from "../gen/cpa/executor/v1/executor_service_pb.js";
import { TaskFailure } from "./attempt.js";

// TaskError codes an attempt fails with when an artifact call does (the Python agent's).
export const ARTIFACT_UPLOAD_FAILED = "ARTIFACT_UPLOAD_FAILED";
export const ARTIFACT_DOWNLOAD_FAILED = "ARTIFACT_DOWNLOAD_FAILED";
export const ARTIFACT_MISMATCH = "ARTIFACT_MISMATCH";
export const INPUT_NOT_FOUND = "INPUT_NOT_FOUND";
// Calls cut by the session's end are made again on the next one, this many times in all.
const CALLS_PER_ARTIFACT = 3;
const TENANT_METADATA_KEY = "x-cpa-tenant";

/** What an artifact call needs of the agent's current (welcomed) session. */
export interface ArtifactLink {
  readonly sessionId: string;
  /** The hello's tenant, sent as `x-cpa-tenant` (read only with authentication off). */
  readonly tenant: string;
}

/**
 * Waits for a welcomed session and returns its link; rejects once `signal` aborts. With `cut`
 * (the link of a call the connection's end cut), a link of a later session, or of the same one
 * once the server has spoken on it since (it survived the cut).
 */
export type LinkSource = (signal: AbortSignal, cut?: ArtifactLink) => Promise<ArtifactLink>;

/**
 * An artifact call failed: a TaskFailure, so a handler that lets it through fails its attempt
 * with `code` (ARTIFACT_UPLOAD_FAILED, ARTIFACT_DOWNLOAD_FAILED, ARTIFACT_MISMATCH,
 * INPUT_NOT_FOUND). Retryable when the scheduler could not be reached (UNAVAILABLE or a reset
 * connection, CANCELLED, DEADLINE_EXCEEDED), not when it refused (too large, a bad name, the attempt no longer this
 * agent's). `cause` is the CpaError (its `reason`: ARTIFACT_TOO_LARGE, INVALID_FIELD...) or the
 * ArtifactCheckError.
 */
export class ArtifactError extends TaskFailure {
  override readonly name: string = "ArtifactError";
  constructor(
    code: string,
    message: string,
    options: { readonly retryable?: boolean; readonly details?: JsonObject } = {},
    override readonly cause?: CpaError | ArtifactCheckError,
  ) {
    super(code, message, options);
  }

  /** The scheduler's ErrorInfo reason when it refused the call ("" otherwise). */
  get reason(): string {
    return this.cause instanceof CpaError ? this.cause.reason : "";
  }
}

/** What a handler gets as `ctx.artifacts`. */
export interface ArtifactAccess {
  /** The task's artifact inputs (ToDo.inputs with artifact_name), by input name: metadata only. */
  readonly inputs: Readonly<Record<string, Artifact>>;
  /**
   * Stores `data` (a string is stored as UTF-8) as an artifact of this attempt; the name is
   * unique within the task (a second save of a name replaces the first). Resolves to the
   * artifact as the task lists it (artifact_id, size, sha256). Throws ArtifactError.
   */
  save(name: string, mediaType: string, data: Uint8Array | string): Promise<Artifact>;
  /** save() of a file's content; the name defaults to the file's base name. */
  saveFile(path: string, options?: { readonly name?: string; readonly mediaType?: string }): Promise<Artifact>;
  /**
   * The artifact bound to input `inputName`, its bytes checked against the sha256 and size the
   * assignment named. Throws ArtifactError (INPUT_NOT_FOUND, ARTIFACT_MISMATCH, ARTIFACT_DOWNLOAD_FAILED).
   */
  readInput(inputName: string): Promise<ArtifactData>;
}

export interface AttemptArtifactsOptions {
  readonly client: Client<typeof ExecutorService>;
  readonly jobId: string;
  readonly taskId: string;
  readonly attempt: number;
  readonly link: LinkSource;
  readonly inputs: Readonly<Record<string, Artifact>>;
  /** The attempt's signal: a stopped attempt's calls end. */
  readonly signal: AbortSignal;
}

/** ArtifactAccess of one attempt. */
export class AttemptArtifacts implements ArtifactAccess {
  readonly inputs: Readonly<Record<string, Artifact>>;

  constructor(private readonly options: AttemptArtifactsOptions) {
    this.inputs = { ...options.inputs };
  }

  async save(name: string, mediaType: string, data: Uint8Array | string): Promise<Artifact> {
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
    const sha256 = await sha256Hex(bytes);
    const { jobId, taskId, attempt } = this.options;
    const response = await this.repeated(ARTIFACT_UPLOAD_FAILED, `storing '${name}'`, (link, signal) => {
      const header = { jobId, taskId, attempt, sessionId: link.sessionId, name, mediaType, sizeBytes: BigInt(bytes.length), sha256 };
      return this.options.client.uploadArtifact(uploadRequests(header, bytes), { signal, headers: metadata(link) });
    });
    if (response.artifact === undefined) {
      throw new ArtifactError(ARTIFACT_UPLOAD_FAILED, `storing '${name}': the server's answer has no artifact`, { retryable: true });
    }
    return response.artifact;
  }

  async saveFile(path: string, options: { readonly name?: string; readonly mediaType?: string } = {}): Promise<Artifact> {
    return await this.save(options.name ?? basename(path), options.mediaType ?? "", await readFile(path));
  }

  async readInput(inputName: string): Promise<ArtifactData> {
    const expected = this.options.inputs[inputName];
    if (expected === undefined) {
      throw new ArtifactError(
        INPUT_NOT_FOUND,
        `the task has no artifact input '${inputName}' (ToDo.inputs with artifact_name)`,
        { retryable: false },
      );
    }
    const request = { artifactId: expected.artifactId, jobId: this.options.jobId };
    let downloaded: ArtifactData;
    try {
      downloaded = await this.repeated(ARTIFACT_DOWNLOAD_FAILED, `reading input '${inputName}'`, (link, signal) =>
        downloadBytes(this.options.client.downloadArtifact(request, { signal, headers: metadata(link) })),
      );
    } catch (error) {
      if (error instanceof ArtifactCheckError) throw new ArtifactError(ARTIFACT_MISMATCH, error.message, { retryable: false }, error);
      throw error;
    }
    // What the assignment promised is what must have arrived (the download checked the bytes
    // against the metadata the server sent with them).
    const { artifact } = downloaded;
    if (artifact.sha256 !== expected.sha256 || artifact.sizeBytes !== expected.sizeBytes) {
      throw new ArtifactError(
        ARTIFACT_MISMATCH,
        `input '${inputName}': the artifact downloaded has sha256 ${artifact.sha256} and ${artifact.sizeBytes} bytes, ` +
          `the assignment named ${expected.sha256} and ${expected.sizeBytes} bytes`,
        { retryable: false },
      );
    }
    return downloaded;
  }

  /** `call` on the current session, again on the next one when the session's end cut it. */
  private async repeated<T>(code: string, what: string, call: (link: ArtifactLink, signal: AbortSignal) => Promise<T>): Promise<T> {
    const { signal } = this.options;
    let cut: ArtifactLink | undefined;
    for (let calls = 1; ; calls += 1) {
      const link = await this.options.link(signal, cut);
      try {
        return await call(link, signal);
      } catch (error) {
        if (!(error instanceof ConnectError) || signal.aborted) throw error;
        if (mayPassOnAnotherSession(error) && calls < CALLS_PER_ARTIFACT) {
          cut = link;
          continue;
        }
        throw failure(code, what, new CpaError(error));
      }
    }
  }
}

async function* uploadRequests(header: MessageInitShape<typeof UploadArtifactHeaderSchema>, data: Uint8Array) {
  yield { kind: { case: "header" as const, value: header } };
  for (const chunk of split(data)) yield { kind: { case: "chunk" as const, value: chunk } };
}

function metadata(link: ArtifactLink): Record<string, string> {
  return link.tenant ? { [TENANT_METADATA_KEY]: link.tenant } : {};
}

/** gRPC's name of a status code ("FAILED_PRECONDITION"), as the Python agent reports it. */
function grpcStatusName(code: Code): string {
  const name = Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
  return name === "CANCELED" ? "CANCELLED" : name;
}

/**
 * Whether the same call may succeed on another session: the connection was cut (UNAVAILABLE,
 * or a reset, which connect-node names ABORTED without a reason) or the call CANCELLED, as the
 * Python agent's UNAVAILABLE and CANCELLED.
 */
function mayPassOnAnotherSession(error: ConnectError): boolean {
  return cut(error) || error.code === Code.Canceled;
}

function failure(code: string, what: string, error: CpaError): ArtifactError {
  const status = grpcStatusName(error.code);
  const retryable = mayPassOnAnotherSession(error.cause) || error.code === Code.DeadlineExceeded;
  return new ArtifactError(code, `${what} failed: ${status}: ${error.serverMessage}`, { retryable, details: { grpc_status: status } }, error);
}
