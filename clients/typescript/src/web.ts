/**
 * @cpa/scheduler-client/web: the client for browsers (and any runtime with fetch and streams:
 * Deno, Node 20+). gRPC-web through the gateway (`cpa gateway`, whose Envoy turns it into gRPC;
 * set CPA_GATEWAY_CORS_ALLOWED_ORIGINS to the page's origin), by createGrpcWebTransport from
 * @connectrpc/connect-web. The same SchedulerClient methods, errors and enums as the Node entry;
 * nothing here imports Node modules (test/web.test.ts walks the import graph to keep it so).
 * Agents stay on Node (ExecutorService.Connect is a bidirectional stream, which gRPC-web lacks).
 */
import type { Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { SchedulerClientBase } from "./client.js";
import { interceptorsOf, type ConnectionOptions } from "./connection.js";

/** gRPC-web over fetch to the gateway at baseUrl, with the credential metadata. */
export function createWebTransport(options: ConnectionOptions): Transport {
  if (options.transport !== undefined) return options.transport;
  return createGrpcWebTransport({ baseUrl: options.baseUrl, interceptors: interceptorsOf(options) });
}

/** SchedulerClient over gRPC-web: `new SchedulerClient({ baseUrl: gatewayUrl, credential })`. */
export class SchedulerClient extends SchedulerClientBase {
  constructor(options: ConnectionOptions) {
    super(createWebTransport(options));
  }
}

export { SchedulerClientBase, type JobSpecInit, type ScheduleOptions, type WatchOptions, type ListJobsOptions } from "./client.js";
export { CpaError, Code, ERROR_DOMAIN, type FieldViolation } from "./errors.js";
export { ArtifactCheckError, MAX_CHUNK_BYTES, type ArtifactData } from "./artifacts.js";
export type { Artifact } from "./gen/cpa/common/v1/artifact_pb.js";
export { credentialInterceptor, type ConnectionOptions } from "./connection.js";
export { JobState, JobView, TaskState, type Job, type JobSpec } from "./gen/cpa/scheduler/v1/job_pb.js";
export type { JobEvent } from "./gen/cpa/scheduler/v1/job_event_pb.js";
export { ActionType, type ToDo } from "./gen/cpa/common/v1/todo_pb.js";
export { ErrorReason } from "./gen/cpa/common/v1/error_pb.js";
export { REPEATABLE_METHODS, retryInterceptor, type RetryOptions } from "./retry.js";
