/**
 * @cpa/scheduler-client: the CPA Scheduler's TypeScript client (SchedulerClient), its typed
 * errors (CpaError), and, under "@cpa/scheduler-client/agent", the executor agent SDK; for
 * browsers, "@cpa/scheduler-client/web" (gRPC-web through the gateway). The
 * generated messages are under "@cpa/scheduler-client/gen/<path>_pb".
 */
export { SchedulerClient } from "./node.js";
export { SchedulerClientBase, type JobSpecInit, type ScheduleOptions, type WatchOptions, type ListJobsOptions } from "./client.js";
export { CpaError, Code, ERROR_DOMAIN, type FieldViolation } from "./errors.js";
export { ArtifactCheckError, MAX_CHUNK_BYTES, type ArtifactData } from "./artifacts.js";
export type { Artifact } from "./gen/cpa/common/v1/artifact_pb.js";
export { createTransport, credentialInterceptor, type ConnectionOptions } from "./transport.js";
export { JobState, JobView, TaskState, type Job, type JobSpec } from "./gen/cpa/scheduler/v1/job_pb.js";
export type { JobEvent } from "./gen/cpa/scheduler/v1/job_event_pb.js";
export { ActionType, type ToDo } from "./gen/cpa/common/v1/todo_pb.js";
export { ErrorReason } from "./gen/cpa/common/v1/error_pb.js";
export { REPEATABLE_METHODS, retryInterceptor, type RetryOptions } from "./retry.js";
