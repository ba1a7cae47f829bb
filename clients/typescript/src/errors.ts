/**
 * CpaError: a failed call to the scheduler, with what its `grpc-status-details-bin` trailer said
 * (google.rpc.ErrorInfo reason and metadata, BadRequest field violations, RetryInfo delay).
 */
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

/** ErrorInfo.domain of every error the scheduler raises. */
export const ERROR_DOMAIN = "cpa.scheduler";

/** One bad field of a request: its path (`spec.todos[0].action`) and what is wrong with it. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

/**
 * An RPC failed. `reason` is the ErrorInfo reason (`"INVALID_FIELD"`, `"JOB_NOT_FOUND"`; the
 * names of cpa.common.v1.ErrorReason without their prefix), `""` when the server sent none
 * (a transport failure). `field` is the field at fault: ErrorInfo.metadata `field`, else the
 * first field violation's.
 */
export class CpaError extends Error {
  override readonly name = "CpaError";
  readonly code: Code;
  readonly reason: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly fieldViolations: readonly FieldViolation[];
  /** RetryInfo.retry_delay in milliseconds (RATE_LIMITED and the like); undefined if absent. */
  readonly retryDelayMs: number | undefined;
  /** The underlying Connect error (raw details, trailers). */
  override readonly cause: ConnectError;

  constructor(error: ConnectError) {
    const info = error.findDetails(ErrorInfoSchema)[0];
    const reason = info?.reason ?? "";
    super(`${Code[error.code]}: ${reason || "-"}: ${error.rawMessage}`);
    this.code = error.code;
    this.reason = reason;
    this.metadata = { ...(info?.metadata ?? {}) };
    this.fieldViolations = error
      .findDetails(BadRequestSchema)
      .flatMap((badRequest) =>
        badRequest.fieldViolations.map(({ field, description }) => ({ field, description })),
      );
    const retry = error.findDetails(RetryInfoSchema)[0]?.retryDelay;
    this.retryDelayMs =
      retry === undefined ? undefined : Number(retry.seconds) * 1000 + retry.nanos / 1e6;
    this.cause = error;
  }

  /** The server's message, without the code and reason this error's `message` starts with. */
  get serverMessage(): string {
    return this.cause.rawMessage;
  }

  get field(): string {
    return this.metadata["field"] ?? this.fieldViolations[0]?.field ?? "";
  }

  /** Whatever a call threw, as a CpaError when it is a failed RPC (anything else unchanged). */
  static from(error: unknown): unknown {
    if (error instanceof CpaError) return error;
    if (error instanceof ConnectError) return new CpaError(error);
    return error;
  }
}

/** Runs `call`, turning a failed RPC into a CpaError. */
export async function decodeErrors<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw CpaError.from(error);
  }
}

export { Code };
