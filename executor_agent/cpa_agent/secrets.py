"""The agent's secret provider: credential references (ToDo.credential_refs) resolved on the agent.

The scheduler carries references only; values exist in this process and nowhere else. References:
- `env:NAME`     the environment variable NAME;
- `file:/path`   the content of an absolute path (one trailing newline stripped);
- `NAME`         (a bare name: letters, digits, '_', '.', '-') the environment variable
                 `CPA_SECRET_<NAME>` (upper-cased, '.' and '-' as '_'), else the file NAME in the
                 directory CPA_AGENT_SECRETS_DIR.
A plug-in (CPA_AGENT_SECRET_PROVIDER="package.module:factory", a callable with no arguments that
returns a SecretProvider) is asked first; a KeyError from it falls through to these rules, so it
may serve only its own scheme ("vault://...").

Whoever may submit ToDos may name any reference: run the agent as a user that can read its
secrets and nothing else it must not hand out (see docs/EXECUTOR_GUIDE.md, "Secrets").
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, MutableSet
from pathlib import Path
from typing import Any

from cpa_agent.executors.base import SecretProvider
from cpa_agent.settings import AgentSettings

logger = logging.getLogger(__name__)

ENV_PREFIX = "env:"
FILE_PREFIX = "file:"
BARE_NAME_ENV_PREFIX = "CPA_SECRET_"
# No path separators and no leading dot: a bare name never leaves the secrets directory.
_BARE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
# A secret file is read whole: bounded, so a reference to /dev/zero cannot exhaust memory.
MAX_SECRET_FILE_BYTES = 64 * 1024

REDACTED = "***"


def _strip_newline(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def _read_secret_file(path: Path) -> str:
    with path.open("rb") as file:
        data = file.read(MAX_SECRET_FILE_BYTES + 1)
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise OSError(f"larger than {MAX_SECRET_FILE_BYTES} bytes")
    return _strip_newline(data.decode("utf-8"))


class DefaultSecretProvider:
    """Environment variables and files, as the module docstring says. Raises KeyError (naming
    the reference, never a value) when the reference resolves to nothing."""

    def __init__(
        self,
        *,
        secrets_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._secrets_dir = secrets_dir
        self._environ = environ if environ is not None else os.environ

    async def get(self, ref: str) -> str:
        if ref.startswith(ENV_PREFIX):
            return self._env(ref, ref.removeprefix(ENV_PREFIX))
        if ref.startswith(FILE_PREFIX):
            path = Path(ref.removeprefix(FILE_PREFIX))
            if not path.is_absolute():
                raise KeyError(f"{ref!r}: a file reference needs an absolute path")
            return await self._file(ref, path)
        if not _BARE_NAME.fullmatch(ref):
            raise KeyError(f"{ref!r}: not env:NAME, file:/path or a bare name")
        variable = BARE_NAME_ENV_PREFIX + re.sub(r"[.\-]", "_", ref).upper()
        if variable in self._environ:
            return self._environ[variable]
        if self._secrets_dir is not None:
            return await self._file(ref, self._secrets_dir / ref)
        raise KeyError(f"{ref!r}: no {variable} and no CPA_AGENT_SECRETS_DIR")

    def _env(self, ref: str, name: str) -> str:
        try:
            return self._environ[name]
        except KeyError:
            raise KeyError(f"{ref!r}: no such environment variable") from None

    @staticmethod
    async def _file(ref: str, path: Path) -> str:
        try:
            # A file may sit on a slow mount: off the event loop.
            return await asyncio.to_thread(_read_secret_file, path)
        except (OSError, UnicodeDecodeError) as error:
            # The reason (missing, unreadable, too large), never the content.
            logger.warning("secret %r unreadable: %s", ref, type(error).__name__)
            raise KeyError(f"{ref!r}: unreadable ({type(error).__name__})") from None


class ChainedSecretProvider:
    """Asks each provider in turn; the first that does not raise KeyError answers."""

    def __init__(self, providers: Iterable[SecretProvider]) -> None:
        self._providers = list(providers)

    async def get(self, ref: str) -> str:
        misses: list[str] = []
        for provider in self._providers:
            try:
                return await provider.get(ref)
            except KeyError as miss:
                misses.append(str(miss.args[0]) if miss.args else ref)
        raise KeyError("; ".join(misses) or ref)


class RecordingSecrets:
    """Hands values through and remembers them, so the runner can scrub them out of everything
    the attempt reports (outputs, errors, progress, artifact names)."""

    def __init__(self, inner: SecretProvider, record: MutableSet[str]) -> None:
        self._inner = inner
        self._record = record

    async def get(self, ref: str) -> str:
        value = await self._inner.get(ref)
        if value:
            self._record.add(value)
        return value


def load_plugin(path: str) -> SecretProvider:
    """The provider an import path names ("package.module:factory"); ValueError otherwise."""
    module_name, colon, attribute = path.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(
            f"CPA_AGENT_SECRET_PROVIDER must be 'package.module:factory', got {path!r}"
        )
    factory: Callable[[], Any] = getattr(importlib.import_module(module_name), attribute)
    provider = factory()
    if not callable(getattr(provider, "get", None)):
        raise ValueError(f"{path} returned {type(provider).__name__}, which has no get(ref)")
    return provider  # type: ignore[no-any-return]


def secret_provider(settings: AgentSettings) -> SecretProvider:
    """The agent's provider for its settings: the plug-in (if any), then the default rules."""
    default = DefaultSecretProvider(secrets_dir=settings.secrets_dir)
    if not settings.secret_provider:
        return default
    return ChainedSecretProvider([load_plugin(settings.secret_provider), default])


# -- scrubbing -----------------------------------------------------------------------------------


def scrub_text(text: str, values: Iterable[str]) -> str:
    """`text` with every value replaced by "***" (longest first, so a secret that contains
    another is replaced whole)."""
    for value in sorted(values, key=len, reverse=True):
        if value and value in text:
            text = text.replace(value, REDACTED)
    return text


def scrub_json(value: Any, values: Iterable[str]) -> Any:
    """A JSON value with every string (object keys included) scrubbed."""
    secrets = list(values)
    if not secrets:
        return value
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if isinstance(value, dict):
        return {scrub_text(str(k), secrets): scrub_json(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_json(item, secrets) for item in value]
    return value
