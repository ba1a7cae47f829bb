"""The `cpa` command line: plan requests, serve the scheduler, run agents, submit and watch jobs.

It sits above the scheduler and the agent (it may import both); neither imports it. One module per
command group (`plan_command`, `serve_command`, `agent_command`, `submit_command`, `jobs_command`,
`demo/command`, `demo/` also holding what the demo runs: portal, loopback services); `output`
renders jobs and events for all of them, `live` follows a running job.
"""

import os

# gRPC core logs a failed TLS handshake at INFO, lines that would precede the CLI's one-line
# report. It reads this when grpc is imported, so here, before any command imports it;
# GRPC_VERBOSITY=info (or debug) in the environment still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
