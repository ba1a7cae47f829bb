/** The Node SchedulerClient: the typed client over gRPC (HTTP/2, @connectrpc/connect-node). */
import { SchedulerClientBase } from "./client.js";
import { createTransport, type ConnectionOptions } from "./transport.js";

export class SchedulerClient extends SchedulerClientBase {
  constructor(options: ConnectionOptions) {
    super(createTransport(options));
  }
}
