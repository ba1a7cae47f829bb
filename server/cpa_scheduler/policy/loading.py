"""Loading policies: one YAML file per tenant in a directory (CPA_POLICY_DIR), checked against
the schema with errors that name file, line and field, compiled once, reloaded when files change.

`<tenant>.yaml` is that tenant's policy; `_default.yaml`, when present, applies to every tenant
without a file of its own (the underscore keeps it apart from a tenant named "default"). Other
files (not ending in .yaml, or starting with '.') are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from cpa_scheduler.planning.catalog_yaml import CatalogError, Locator, parse_yaml

from .model import PolicySpec
from .rules import Policy

log = logging.getLogger(__name__)

POLICY_SUFFIX = ".yaml"
FALLBACK_STEM = "_default"
# A policy is a few lists; a file this large is a mistake (or an attack on the loader).
MAX_POLICY_FILE_BYTES = 1024 * 1024

PolicyFileError = CatalogError
"""A policy file that cannot be used; its message reads `<file>:<line>: <where>: <problem>`."""


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """A policy from YAML text; PolicyFileError naming `source`, line and field otherwise."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_POLICY_FILE_BYTES:
        raise PolicyFileError(
            f"the file is {size} bytes; a policy file may have at most {MAX_POLICY_FILE_BYTES}",
            source=source,
            line=None,
        )
    data, lines = parse_yaml(
        text, source=source, empty="the policy is empty; expected a mapping of rules"
    )
    locator = Locator(source=source, data=data, lines=lines)
    if not isinstance(data, dict):
        raise locator.error((), "a policy is a mapping of rules (actions, apps, urls, ...)")
    try:
        spec = PolicySpec.model_validate(data)
    except ValidationError as exc:
        raise locator.schema_error(exc) from None
    return Policy.compile(spec, source=source)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """A policy file; OSError if it cannot be read, PolicyFileError if it is broken."""
    source = str(path)
    with open(path, "rb") as file:
        raw = file.read(MAX_POLICY_FILE_BYTES + 1)
    if len(raw) > MAX_POLICY_FILE_BYTES:
        raise PolicyFileError(
            f"the file is larger than {MAX_POLICY_FILE_BYTES} bytes, the most a policy may have",
            source=source,
            line=None,
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PolicyFileError(f"not UTF-8 ({exc.reason})", source=source, line=line) from None
    return parse_policy(text, source=source)


@dataclass(frozen=True, slots=True)
class PolicySet:
    """The policies of every tenant: `get` is one dict lookup, None for a tenant without one."""

    by_tenant: dict[str, Policy] = field(default_factory=dict)
    fallback: Policy | None = None

    def get(self, tenant: str) -> Policy | None:
        return self.by_tenant.get(tenant, self.fallback)

    def __bool__(self) -> bool:
        return bool(self.by_tenant) or self.fallback is not None


def _policy_files(directory: Path) -> list[Path]:
    return sorted(
        entry
        for entry in directory.iterdir()
        if entry.name.endswith(POLICY_SUFFIX) and not entry.name.startswith(".")
    )


def load_policy_dir(directory: str | os.PathLike[str]) -> PolicySet:
    """Every policy of a directory; OSError or PolicyFileError (the first broken file)."""
    by_tenant: dict[str, Policy] = {}
    fallback = None
    for path in _policy_files(Path(directory)):
        policy = load_policy(path)
        stem = path.name.removesuffix(POLICY_SUFFIX)
        if stem == FALLBACK_STEM:
            fallback = policy
        else:
            by_tenant[stem] = policy
    return PolicySet(by_tenant, fallback)


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a policy file is added, removed or rewritten (stat follows the
    symbolic links a Kubernetes ConfigMap volume is made of)."""
    result = []
    for path in _policy_files(directory):
        try:
            status = path.stat()
        except FileNotFoundError:
            continue
        result.append((path.name, status.st_mtime_ns, status.st_size))
    return tuple(result)


class Policies:
    """The policies in force on this replica: loaded at start, swapped whole on reload.

    Without a directory there are none, and every check is a lookup that finds nothing. A
    reload that finds a broken file keeps the policies in force (all of them) and logs the
    file, line and problem; the next change is tried again.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._directory = None if directory is None else Path(directory)
        self._fingerprint: tuple[tuple[str, int, int], ...] = ()
        self.current = PolicySet()
        if self._directory is not None:
            # At start a broken or missing directory stops the server, naming file and line.
            self._fingerprint = _fingerprint(self._directory)
            self.current = load_policy_dir(self._directory)

    @property
    def directory(self) -> Path | None:
        return self._directory

    def get(self, tenant: str) -> Policy | None:
        return self.current.get(tenant)

    def reload_if_changed(self) -> bool:
        """Reload when the directory's files changed since the last load; True if swapped."""
        if self._directory is None:
            return False
        try:
            fingerprint = _fingerprint(self._directory)
        except OSError as error:
            log.error("cannot read the policy directory %s: %s", self._directory, error)
            return False
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        try:
            policies = load_policy_dir(self._directory)
        except (OSError, PolicyFileError) as error:
            log.error("policies not reloaded, the ones in force stay: %s", error)
            return False
        self.current = policies
        log.info(
            "policies reloaded from %s: %d tenant file(s)%s",
            self._directory,
            len(policies.by_tenant),
            ", and _default.yaml" if policies.fallback is not None else "",
        )
        return True

    async def watch_forever(self, *, interval_s: float) -> None:
        """Look for changed files every `interval_s` until cancelled (a background task of the
        server); reading runs in a thread, the swap is one assignment."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.reload_if_changed)
            except Exception:  # never let a surprise end the watch: the policies stay in force
                log.exception("checking the policy directory failed")
