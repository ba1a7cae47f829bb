"""Hostile UploadArtifact calls: a client stream of frames (upload messages or garbage) under a
tenant, judged as every other call (no INTERNAL or UNKNOWN, no hang, bad input INVALID_ARGUMENT
naming its field). Ids are forged from what the arena knows: other tenants' jobs, the normal
job's running attempt, made-up sessions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import grpc
from hypothesis import strategies as st

from cpa.executor.v1 import executor_service_pb2 as ex

from .arena import CALL_TIMEOUT_S, DEFAULT_TENANT, HOSTILE_TENANTS, NORMAL_TENANT, tenant_metadata
from .calls import EXECUTOR, Outcome, failed_outcome
from .strategies import KNOWN

MIB = 1024 * 1024


@dataclass(frozen=True)
class Upload:
    """One hostile upload: its frames, the tenant it names and how it was made."""

    frames: tuple[ex.UploadArtifactRequest | bytes, ...]
    tenant: str | None
    how: str
    rpc: str = "UploadArtifact"

    def encoded(self) -> list[bytes]:
        return [f if isinstance(f, bytes) else f.SerializeToString() for f in self.frames]

    def __repr__(self) -> str:
        kinds = [
            f"<{len(f)} raw bytes>"
            if isinstance(f, bytes)
            else (
                f"header({f.header.job_id[:40]!r}, {f.header.task_id[:20]!r}, "
                f"#{f.header.attempt}, session {f.header.session_id[:20]!r}, "
                f"size {f.header.size_bytes})"
                if f.WhichOneof("kind") == "header"
                else f"chunk({len(f.chunk)})"
            )
            for f in self.frames
        ]
        return f"Upload({self.how}, tenant {self.tenant!r}: {', '.join(kinds)[:600]})"


def open_upload(channel: grpc.Channel, upload: Upload) -> Outcome:
    path = f"/{EXECUTOR.full_name}/UploadArtifact"
    call = channel.stream_unary(path, None, ex.UploadArtifactResponse.FromString)

    def frames() -> Iterator[bytes]:
        yield from upload.encoded()

    try:
        response = call(frames(), metadata=tenant_metadata(upload.tenant), timeout=CALL_TIMEOUT_S)
        return Outcome(grpc.StatusCode.OK, "", responses=[response])
    except grpc.RpcError as error:
        return failed_outcome(error)


def header(
    data: bytes = b"x",
    *,
    job_id: str = "",
    task_id: str = "t1",
    attempt: int = 1,
    session_id: str = "f" * 32,
    name: str = "shot.png",
    media_type: str = "image/png",
    size_bytes: int | None = None,
    sha256: str | None = None,
) -> ex.UploadArtifactRequest:
    return ex.UploadArtifactRequest(
        header=ex.UploadArtifactHeader(
            job_id=job_id or (KNOWN.attempts[0][0] if KNOWN.attempts else "job-1"),
            task_id=task_id,
            attempt=attempt,
            session_id=session_id,
            name=name,
            media_type=media_type,
            size_bytes=len(data) if size_bytes is None else size_bytes,
            sha256=hashlib.sha256(data).hexdigest() if sha256 is None else sha256,
        )
    )


def chunk(data: bytes) -> ex.UploadArtifactRequest:
    return ex.UploadArtifactRequest(chunk=data)


def explicit_uploads() -> list[Upload]:
    """The streaming cases every run makes, named."""
    normal = [a for a in KNOWN.attempts if a[1] == "wait"]
    normal_job = normal[0][0] if normal else "job-1"
    return [
        Upload((), None, "no message at all"),
        Upload((chunk(b"data"),), None, "chunk before header"),
        Upload((chunk(b"data"), header(b"data")), None, "chunk, then header"),
        Upload((header(), header(), chunk(b"x")), None, "two headers"),
        Upload((header(b"y" * (MIB + 1)), chunk(b"y" * (MIB + 1))), None, "chunk over 1 MiB"),
        Upload((header(b"z" * (3 * MIB)), chunk(b"z" * (3 * MIB))), None, "chunk of 3 MiB"),
        Upload((header(size_bytes=-1),), None, "negative size"),
        Upload((header(size_bytes=2**62),), None, "size far over the limit"),
        Upload((header(sha256="A" * 64),), None, "upper-case digest"),
        Upload((header(name="../../etc/passwd"),), None, "climbing name"),
        Upload((header(name="a\x00b"),), None, "NUL in name"),
        Upload((header(media_type="not a type"),), None, "bad media type"),
        Upload((header(attempt=-5),), None, "negative attempt"),
        Upload((header(job_id="j" * 4000),), None, "huge job id"),
        # The normal job's running attempt, from sessions that do not hold it.
        Upload(
            (header(job_id=normal_job, task_id="wait"), chunk(b"x")),
            NORMAL_TENANT,
            "forged session",
        ),
        Upload(
            (header(job_id=normal_job, task_id="wait", session_id=""),), NORMAL_TENANT, "no session"
        ),
        Upload(
            (header(job_id=normal_job, task_id="wait"), chunk(b"x")),
            HOSTILE_TENANTS[0],
            "other tenant",
        ),
        Upload((header(), b"\xff\xff\xff\xff garbage"), None, "garbage after header"),
        # Messages with neither header nor chunk.
        Upload((ex.UploadArtifactRequest(),), None, "empty first message"),
        Upload((header(b""), ex.UploadArtifactRequest()), None, "empty message after header"),
    ]


_text = st.text(max_size=80)


def known_job_ids() -> tuple[str, ...]:
    """The jobs with attempts seen so far (forged uploads name them), or a made-up one."""
    return tuple(job for job, _, _ in KNOWN.attempts) or ("job-1",)


@st.composite
def uploads(draw: st.DrawFn, known_jobs: Sequence[str]) -> Upload:
    """Random frame sequences: headers with forged or odd fields, chunks, garbage. `known_jobs`
    is fixed for a test's run (`known_job_ids()`): drawn from a list that grows while examples
    run, the same choices would not replay (hypothesis' FlakyStrategyDefinition)."""
    frame = st.one_of(
        st.builds(
            header,
            data=st.binary(max_size=64),
            job_id=st.one_of(st.sampled_from(known_jobs), _text),
            task_id=st.one_of(st.sampled_from(["t1", "wait"]), _text),
            attempt=st.integers(-(2**31), 2**31 - 1),
            session_id=st.one_of(_text, st.just("f" * 32)),
            name=_text,
            media_type=st.one_of(st.just("application/pdf"), _text),
            size_bytes=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
            sha256=st.one_of(st.none(), _text),
        ),
        st.binary(max_size=4096).map(chunk),
        st.binary(min_size=1, max_size=64).map(lambda raw: b"\x0a\xff" + raw),
    )
    frames: Sequence[ex.UploadArtifactRequest | bytes] = draw(st.lists(frame, max_size=6))
    tenant = draw(st.sampled_from([None, DEFAULT_TENANT, NORMAL_TENANT, *HOSTILE_TENANTS]))
    return Upload(tuple(frames), tenant, "random")
