/** The executor agent SDK: `new Agent({...handlers}).run()`. See README.md "Write an agent". */
export { Agent, type AgentOptions, VERSION } from "./agent.js";
export {
  TaskFailure,
  actionName,
  type Handler,
  type TaskContext,
  type StopReason,
  TASK_TIMEOUT,
  DEADLINE_EXCEEDED,
  CANCELLED,
  AGENT_SHUTDOWN,
  EXECUTOR_EXCEPTION,
  UNKNOWN_ACTION,
  INVALID_OUTPUTS,
  OUTPUT_TOO_LARGE,
} from "./attempt.js";
export {
  ArtifactError,
  type ArtifactAccess,
  ARTIFACT_UPLOAD_FAILED,
  ARTIFACT_DOWNLOAD_FAILED,
  ARTIFACT_MISMATCH,
  INPUT_NOT_FOUND,
} from "./artifacts.js";
export {
  type SessionEnd,
  type SessionEndedHook,
  type ResourceFactory,
  type ResourceDisposer,
  SESSION_ATTEMPT_CANCELLED,
  SESSION_ATTEMPT_NOT_CURRENT,
  SESSION_AGENT_STOPPED,
  NO_SESSION,
} from "./sessions.js";
export { ArtifactCheckError, MAX_CHUNK_BYTES, type ArtifactData } from "../artifacts.js";
