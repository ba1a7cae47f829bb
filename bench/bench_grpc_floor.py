"""The floor under WatchJob's deliveries: how many server-streaming messages a bare grpc.aio
server sends per second on this machine when it does nothing else.

Starts a server process (no scheduler: one generic unary-stream method whose handler writes one
message, waits until every stream is open, then writes the same pre-encoded 120-byte message
with `context.write` as fast as its reader takes it) and `--client-processes` processes opening
`--streams` calls between them (250 per channel, read as raw bytes, the same clients as
bench_watchers.py), then counts the messages received during `--seconds` and the server's CPU.
What `cpa serve` delivers to the same number of watchers (bench_watchers.py) can be set against
this: the scheduler's own work per event is the difference.

    python bench/bench_grpc_floor.py [--streams 10000] [--seconds 15] [--client-nice 19]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_throughput import CpuMeter, calibration_ms  # noqa: E402

METHOD = "/floor.v1.Floor/Stream"
STREAMS_PER_CHANNEL = 250
PAYLOAD = b"\x0a\x76" + b"x" * 118  # a progress event's WatchJobResponse is 70-90 bytes


def run_server() -> None:
    go = asyncio.Event()

    async def stream(_request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        await context.write(PAYLOAD)  # tells the client it is open
        await go.wait()  # every stream opens before any floods the loop
        while True:
            await context.write(PAYLOAD)

    async def serve() -> None:
        limits = [
            ("grpc.server.max_pending_requests", 20_000),
            ("grpc.server.max_pending_requests_hard_limit", 20_000),
        ]
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *limits])
        handler = grpc.method_handlers_generic_handler(
            "floor.v1.Floor", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        go.set()
        await server.wait_for_termination()

    asyncio.run(serve())


async def _clients(target: str, streams: int) -> None:
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, -(-streams // STREAMS_PER_CHANNEL)))
    ]
    window = [float("inf"), float("inf")]
    counts = [0]
    opened = [0]
    all_open = asyncio.Event()

    async def one(index: int) -> None:
        method = channels[index % len(channels)].unary_stream(
            METHOD, request_serializer=None, response_deserializer=None
        )
        first = True
        async for _raw in method(b""):
            if first:
                first = False
                opened[0] += 1
                if opened[0] == streams:
                    all_open.set()
            if window[0] <= time.time() < window[1]:
                counts[0] += 1

    tasks = [asyncio.create_task(one(n)) for n in range(streams)]
    await all_open.wait()
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    window[0], window[1] = (float(value) for value in line.split())
    await asyncio.sleep(max(0.0, window[1] - time.time()) + 0.2)
    print(json.dumps({"messages": counts[0]}), flush=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def run_clients(target: str, streams: int, nice: int) -> None:
    if nice:
        os.nice(nice)  # as bench_watchers.py: the load generator takes only idle CPU
    asyncio.run(_clients(target, streams))


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=["main", "server", "clients"], default="main")
    parser.add_argument("--target", default="")
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--client-nice", type=int, default=19)
    args = parser.parse_args()
    if args.role == "server":
        run_server()
        return
    if args.role == "clients":
        run_clients(args.target, args.streams, args.client_nice)
        return

    print(f"calibration loop: {calibration_ms():.0f} ms")
    server = _spawn(["--role", "server"])
    assert server.stdout is not None
    target = f"127.0.0.1:{server.stdout.readline().strip()}"
    per_process = [args.streams // args.client_processes] * args.client_processes
    per_process[0] += args.streams - sum(per_process)
    clients = [
        _spawn(
            [
                *("--role", "clients", "--target", target, "--streams", str(count)),
                *("--client-nice", str(args.client_nice)),
            ]
        )
        for count in per_process
    ]
    try:
        for client in clients:
            assert client.stdout is not None
            if client.stdout.readline().strip() != "ready":
                raise RuntimeError("a client process did not open its streams")
        assert server.stdin is not None
        server.stdin.write("go\n")
        server.stdin.flush()
        start = time.time() + args.warmup
        end = start + args.seconds
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(f"{start} {end}\n")
            client.stdin.flush()
        meter = CpuMeter(
            {"server": [server.pid], "clients": [c.pid for c in clients]}, distributed=False
        )
        time.sleep(max(0.0, start - time.time()))  # the window is wall-clock: nothing to await
        meter.start()
        time.sleep(max(0.0, end - time.time()))
        meter.stop()
        received = 0
        for client in clients:
            assert client.stdout is not None
            received += json.loads(client.stdout.readline())["messages"]
    finally:
        for process in [*clients, server]:
            process.kill()
            process.wait()
    per_s = received / args.seconds
    server_cores = meter.used_s["server"] / meter.elapsed_s
    client_cores = meter.used_s["clients"] / meter.elapsed_s
    print(f"{args.streams} streams, {args.seconds:g}s measured, a bare grpc.aio server")
    print(f"messages: {per_s:.0f}/s")
    print(
        f"server CPU: {server_cores:.2f} cores, {1e6 * server_cores / per_s:.1f} us per message; "
        f"clients {client_cores:.2f} cores, {1e6 * client_cores / per_s:.1f} us per message"
    )


if __name__ == "__main__":
    main()
