"""What each new session of the agent's stream starts from: the server address to try (rotated
away from a replica that drains), the delay before trying (full-jitter backoff), the channel's
options, and the hello. Connection (connection.py) runs the sessions.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from cpa.common.v1 import agent_capabilities_pb2
from cpa.executor.v1 import executor_service_pb2 as pb
from cpa_agent._version import __version__
from cpa_agent.settings import AgentSettings

# 2**32 times any initial backoff exceeds any sensible maximum; bigger exponents only overflow.
_MAX_BACKOFF_EXPONENT = 32


def channel_options(settings: AgentSettings) -> list[tuple[str, Any]]:
    """The options of each session's channel."""
    return [
        # Each session opens a fresh channel. With the global subchannel pool it would inherit a
        # failed subchannel and gRPC's own reconnect backoff (1 s, growing) instead of ours.
        ("grpc.use_local_subchannel_pool", 1),
        # Told to the server in the hello: it sends nothing larger.
        ("grpc.max_receive_message_length", settings.max_receive_bytes),
    ]


def rotate_addresses(target: str) -> str:
    """`ipv4:a,b,c` -> `ipv4:b,c,a` (also `ipv6:`); any other target is returned unchanged.

    gRPC's pick_first connects to the first address that accepts: after a replica asked the
    agent to leave (ServerDrain) or refused it, the next connect must try another one first.
    """
    scheme, colon, addresses = target.partition(":")
    if scheme not in ("ipv4", "ipv6") or not colon or "," not in addresses:
        return target
    first, rest = addresses.split(",", 1)
    return f"{scheme}:{rest},{first}"


def full_jitter_backoff_s(
    failures: int,
    *,
    initial_s: float,
    max_s: float,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Delay before the next connect: uniform between 0 and min(max_s, initial_s * 2**failures)."""
    cap_s = min(max_s, initial_s * 2 ** min(failures, _MAX_BACKOFF_EXPONENT))
    return uniform(0.0, cap_s)


def hello_request(
    settings: AgentSettings,
    *,
    actions: Sequence[str],
    capabilities: Sequence[str],
    running_attempts: Sequence[pb.RunningAttempt],
    resume_session_id: str,
) -> pb.ConnectRequest:
    """The first message of a session: who the agent is, what it offers (`actions` and
    `capabilities`, as found at this hello), what runs here, and the session it resumes."""
    return pb.ConnectRequest(
        hello=pb.Hello(
            agent_id=settings.agent_id,
            name=settings.name,
            tenant=settings.tenant,
            capabilities=agent_capabilities_pb2.AgentCapabilities(
                actions=actions,
                capabilities=capabilities,
                labels=settings.labels,
                slots=settings.slots,
            ),
            running_attempts=running_attempts,
            version=__version__,
            accepts_batches=True,
            max_receive_bytes=settings.max_receive_bytes,
            # Takes over our last session if the server still holds it (a cut without FIN).
            resume_session_id=resume_session_id,
        )
    )
