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
