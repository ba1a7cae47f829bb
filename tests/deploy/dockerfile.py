"""deploy/Dockerfile read and its install steps replayed without Docker (no engine here).

`replay` performs a stage's WORKDIR, COPY and install RUN lines on a directory standing for the
image's file system: COPY takes the sources the line names from the build context (minus what
.dockerignore excludes), RUN bind mounts become symlinks, and the RUN line runs with every
absolute path moved under that directory. So the test installs exactly what the image gets,
by the same commands: a COPY that misses a source, or an install step outside
deploy/install.sh, fails it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_SCRIPT = "install.sh"
# What a Python dependency install looks like; only deploy/install.sh may do it.
_INSTALLING = ("pip", "install.sh", "setup.py", "uv ")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    arguments: str  # the rest of the line, continuations joined

    def exec_form(self) -> list[str]:
        """The JSON array of CMD/ENTRYPOINT/HEALTHCHECK CMD ["a", "b"]."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD ") + 4 :]  # after the options
        value = json.loads(text)
        assert isinstance(value, list), f"{self.keyword} is not in exec form: {self.arguments}"
        return [str(item) for item in value]


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(path: Path) -> dict[str, Stage]:
    """The stages of a Dockerfile by name (comments dropped, continuation lines joined)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # a comment may sit between continuation lines too
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: a continuation line ends the file"
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = arguments.partition(" AS ")
            current = Stage(name=name.strip() or base.strip(), base=base.strip())
            stages[current.name] = current
        elif current is not None:
            current.instructions.append(Instruction(keyword, arguments.strip()))
    return stages


def installs_python_packages(run: Instruction) -> bool:
    return any(word in run.arguments for word in _INSTALLING)


def dockerignore(context: Path) -> Callable[[str], bool]:
    """Whether a path relative to the context is excluded (.dockerignore, without `!` rules:
    a pattern matches the path or one of its parent directories; `**/` any depth)."""
    file = context / ".dockerignore"
    patterns = [
        line.strip()
        for line in file.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "exceptions (!) are not replayed"

    def excluded(relative: str) -> bool:
        parts = relative.split("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            for pattern in patterns:
                if fnmatch.fnmatchcase(prefix, pattern):
                    return True
                if pattern.startswith("**/") and fnmatch.fnmatchcase(parts[depth - 1], pattern[3:]):
                    return True
        return False

    return excluded


@dataclass
class Replay:
    """One image file system (`root`) built from `context`, stage after stage."""

    context: Path
    root: Path
    env: Mapping[str, str]
    ran: list[list[str]] = field(default_factory=list)

    def inside(self, path: str) -> Path:
        """The image path `path` (absolute) under root."""
        return self.root / path.lstrip("/")

    def stage(self, stage: Stage) -> None:
        workdir = "/"
        for instruction in stage.instructions:
            if instruction.keyword == "WORKDIR":
                workdir = os.path.join(workdir, instruction.arguments)
                self.inside(workdir).mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "COPY":
                self._copy(instruction, workdir)
            elif instruction.keyword == "RUN" and installs_python_packages(instruction):
                self._run(instruction, workdir)

    def _copy(self, copy: Instruction, workdir: str) -> None:
        words = shlex.split(copy.arguments)
        assert not any(w.startswith("--from") for w in words), f"COPY --from: {copy.arguments}"
        *sources, destination = [w for w in words if not w.startswith("--")]
        target = self.inside(os.path.join(workdir, destination))
        excluded = dockerignore(self.context)
        for source in sources:
            path = self.context / source
            assert path.exists(), f"COPY {source}: not in the build context"
            if path.is_dir():
                shutil.copytree(
                    path,
                    target,
                    dirs_exist_ok=True,
                    ignore=lambda directory, names: [
                        n
                        for n in names
                        if excluded(str((Path(directory) / n).relative_to(self.context)))
                    ],
                )
            else:
                assert not excluded(source), f"COPY {source}: excluded by .dockerignore"
                into_directory = destination.endswith("/") or len(sources) > 1
                file_target = target / path.name if into_directory else target
                file_target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, file_target)

    def _run(self, run: Instruction, workdir: str) -> None:
        words = shlex.split(run.arguments)
        mounts = [w.removeprefix("--mount=") for w in words if w.startswith("--mount=")]
        command = [w for w in words if not w.startswith("--mount=")]
        by_script = len(command) >= 3 and command[0] == "sh"
        by_script = by_script and command[1].endswith(INSTALL_SCRIPT)
        assert by_script, (
            f"Python packages are installed only by `sh .../{INSTALL_SCRIPT} ...`, not: "
            f"{run.arguments}"
        )
        links = [self._mount(mount) for mount in mounts]
        try:
            argv = [str(self.inside(w)) if w.startswith("/") else w for w in command]
            self.ran.append(command)
            result = subprocess.run(
                argv,
                cwd=self.inside(workdir),
                env=dict(self.env),
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert result.returncode == 0, (
                f"RUN {run.arguments} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        finally:
            for link in links:
                link.unlink()  # a bind mount leaves nothing in the layer

    def _mount(self, spec: str) -> Path:
        options = dict(part.split("=", 1) for part in spec.split(","))
        assert options.get("type") == "bind", f"only bind mounts are replayed: {spec}"
        # Every stage lives in one root here, so another stage's path is under root too.
        source = self.inside(options["source"]) if "from" in options else None
        source = source or self.context / options["source"]
        assert source.exists(), f"--mount source {options['source']} does not exist"
        link = self.inside(options["target"])
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source)
        return link
