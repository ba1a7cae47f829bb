"""The Dockerfile replay of the install test catches what a real build would: a source no COPY
brings, a file .dockerignore keeps out, an install step beside deploy/install.sh."""

from __future__ import annotations

from pathlib import Path

import pytest

from .dockerfile import Replay, parse


def _context(tmp_path: Path, dockerfile: str, dockerignore: str = "") -> Path:
    context = tmp_path / "context"
    (context / "pkg" / "__pycache__").mkdir(parents=True)
    (context / "pkg" / "mod.py").write_text("x = 1\n", encoding="utf-8")
    (context / "pkg" / "__pycache__" / "mod.pyc").write_bytes(b"\0")
    (context / "README.md").write_text("readme\n", encoding="utf-8")
    (context / ".dockerignore").write_text(dockerignore, encoding="utf-8")
    (context / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    return context


def _replay(context: Path, tmp_path: Path) -> Replay:
    replay = Replay(context=context, root=tmp_path / "root", env={})
    for stage in parse(context / "Dockerfile").values():
        replay.stage(stage)
    return replay


def test_parse_joins_continuations_and_drops_comments(tmp_path: Path) -> None:
    context = _context(
        tmp_path,
        "ARG BASE=python:3.11-slim\nFROM ${BASE} AS one\n# a comment\nRUN echo a \\\n"
        "    # inside a continuation\n    && echo b\nFROM one AS two\n"
        'HEALTHCHECK --interval=5s CMD ["cpa", "health"]\n',
    )
    stages = parse(context / "Dockerfile")
    assert list(stages) == ["one", "two"]
    assert stages["one"].base == "${BASE}"
    assert [i.arguments for i in stages["one"].all("RUN")] == ["echo a && echo b"]
    assert stages["two"].all("HEALTHCHECK")[0].exec_form() == ["cpa", "health"]


def test_copy_brings_what_it_names_minus_dockerignore(tmp_path: Path) -> None:
    context = _context(
        tmp_path,
        "FROM base AS b\nWORKDIR /src\nCOPY pkg/ pkg/\nCOPY README.md ./\n",
        "**/__pycache__\n",
    )
    replay = _replay(context, tmp_path)
    assert (replay.inside("/src/pkg/mod.py")).read_text(encoding="utf-8") == "x = 1\n"
    assert (replay.inside("/src/README.md")).is_file()
    assert not (replay.inside("/src/pkg/__pycache__")).exists()


@pytest.mark.parametrize(
    ("dockerfile", "dockerignore", "complaint"),
    [
        ("FROM b AS b\nCOPY missing/ m/\n", "", "COPY missing/: not in the build context"),
        ("FROM b AS b\nCOPY README.md ./\n", "*.md\n", "excluded by .dockerignore"),
        ("FROM b AS b\nRUN pip install requests\n", "", "installed only by `sh .../install.sh"),
        ("FROM b AS b\nCOPY --from=x /a /a\n", "", "COPY --from"),
    ],
)
def test_what_a_build_would_miss_fails_the_replay(
    tmp_path: Path, dockerfile: str, dockerignore: str, complaint: str
) -> None:
    context = _context(tmp_path, dockerfile, dockerignore)
    with pytest.raises(AssertionError, match=complaint.replace("(", r"\(").replace(".", r"\.")):
        _replay(context, tmp_path)


def test_run_moves_absolute_paths_under_the_root_and_removes_its_mounts(tmp_path: Path) -> None:
    context = _context(
        tmp_path,
        "FROM b AS b\nWORKDIR /src\nCOPY pkg/ pkg/\n"
        "RUN --mount=type=bind,source=pkg/mod.py,target=/tmp/install.sh "
        "sh /tmp/install.sh build /out\n",
    )
    # The mounted "script" is pkg/mod.py: `sh` runs `x = 1`, which fails, naming the line.
    with pytest.raises(AssertionError, match=r"RUN --mount=.* failed"):
        _replay(context, tmp_path)
    assert not (tmp_path / "root" / "tmp" / "install.sh").exists()
