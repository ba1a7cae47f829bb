"""The TypeScript web client in a real browser page: headless Chromium loads a page from one
origin that imports `@cpa/scheduler-client/web` (the compiled package and its dependencies as
native ES modules, by an import map) and calls `cpa gateway` on another origin, so CORS, the
preflight and the exposed gRPC-web headers are the browser's own checks, not ours."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from .conftest import StartCli, start_server
from .rest_gateway import start_gateway

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"
CHROMIUM = os.environ.get("CPA_TEST_CHROMIUM", "/usr/bin/chromium")
# The packages the web entry imports (test/web.test.ts pins this list).
WEB_PACKAGES = ("@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-web")
PAGE_TIMEOUT_MS = 30_000

PAGE_SCRIPT = """
import { ActionType, CpaError, SchedulerClient } from "/dist/web.js";
const gateway = new URLSearchParams(location.search).get("gateway");
const client = new SchedulerClient({ baseUrl: gateway });
try {
  const todos = [{ id: "t", action: ActionType.CUSTOM, customAction: "page_nobody" }];
  const job = await client.scheduleJob({ source: { case: "todos", value: { todos } } });
  await client.cancelJob(job.jobId, "from a page");
  const events = [];
  for await (const e of client.watch(job.jobId)) events.push([Number(e.sequence), e.terminal]);
  let error = null;
  try {
    await client.scheduleJob({ source: { case: "todos", value: { todos: [
      { id: "a", action: ActionType.CUSTOM, customAction: "x", dependsOn: ["ghost"] }] } } });
  } catch (e) {
    error = { cpa: e instanceof CpaError, code: e.code, reason: e.reason, field: e.field };
  }
  window.result = { events, error };
} catch (e) {
  window.result = { failure: String(e) };
}
"""


def _require(condition: bool, message: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _import_map() -> dict[str, Any]:
    """Every export of the web entry's packages, from their package.json `exports` (ESM)."""
    imports: dict[str, str] = {}
    for name in WEB_PACKAGES:
        manifest = json.loads((PACKAGE / "node_modules" / name / "package.json").read_text())
        for subpath, target in manifest["exports"].items():
            entry = target.get("import", target) if isinstance(target, dict) else target
            entry = entry.get("default", entry) if isinstance(entry, dict) else entry
            if isinstance(entry, str) and entry.endswith(".js") and "*" not in subpath:
                specifier = name + subpath.removeprefix(".")
                imports[specifier] = f"/node_modules/{name}/{entry.removeprefix('./')}"
    return {"imports": imports}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    """A static server on its own origin: the page, the compiled package, node_modules."""
    _require(
        shutil.which("npx") is not None and (PACKAGE / "node_modules").is_dir(),
        "needs npm and `npm ci` in clients/typescript (make typescript does both)",
    )
    _require(shutil.which(CHROMIUM) is not None, f"no Chromium at {CHROMIUM} (make chromium)")
    root = tmp_path / "site"
    root.mkdir()
    subprocess.run(
        ["npx", "tsc", "-p", "tsconfig.json", "--outDir", str(root / "dist")],
        cwd=PACKAGE,
        check=True,
        timeout=180,
    )
    (root / "node_modules").symlink_to(PACKAGE / "node_modules")
    (root / "page.html").write_text(
        '<!doctype html><script type="importmap">'
        + json.dumps(_import_map())
        + '</script><script type="module">'
        + PAGE_SCRIPT
        + "</script>",
        encoding="utf-8",
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _run_page(site: str, gateway: str) -> dict[str, Any]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(f"{site}/page.html?gateway=http://{gateway}")
            page.wait_for_function("window.result !== undefined", timeout=PAGE_TIMEOUT_MS)
            result: dict[str, Any] = page.evaluate("window.result")
        finally:
            browser.close()
    return result


def test_a_page_of_an_allowed_origin_schedules_watches_and_reads_errors(
    start_cli: StartCli, site: str
) -> None:
    _, upstream = start_server(start_cli)
    _, gateway, _ = start_gateway(
        start_cli, upstream, env={"CPA_GATEWAY_CORS_ALLOWED_ORIGINS": site}
    )
    result = _run_page(site, gateway)
    assert "failure" not in result, result
    sequences = [sequence for sequence, _ in result["events"]]
    assert len(sequences) >= 2, result  # created ... cancelled
    assert sequences == list(range(1, len(sequences) + 1)), result
    assert result["events"][-1][1] is True  # ends with the terminal (cancelled) event
    assert result["error"] == {
        "cpa": True,
        "code": 3,  # INVALID_ARGUMENT, read from the exposed grpc-status-details-bin
        "reason": "UNKNOWN_DEPENDENCY",
        "field": "spec.todos.todos[0].depends_on[0]",
    }


def test_a_page_of_another_origin_is_refused_by_the_browser(start_cli: StartCli, site: str) -> None:
    _, upstream = start_server(start_cli)
    _, gateway, _ = start_gateway(
        start_cli, upstream, env={"CPA_GATEWAY_CORS_ALLOWED_ORIGINS": "http://elsewhere.example"}
    )
    result = _run_page(site, gateway)
    # The browser blocks the fetch (no CORS answer for this origin): a call failed, unread.
    assert "Failed to fetch" in result.get("failure", ""), result
