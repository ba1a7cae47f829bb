"""The REST bindings (google.api.http rules) of the transcoded services, read from the same
descriptor set Envoy loads (deploy/api.binpb), so the gateway's routes cannot drift from them.

Used to answer a known path called with a method it does not bind (`PUT /v1/jobs`) with 405 and
an `allow` header: Envoy's transcoder answers 404 for it, as for an unknown path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

_METHODS = ("get", "put", "post", "delete", "patch")
# A path variable, `{job_id}` or `{name=jobs/*}`: one segment (the only form our protos use).
_VARIABLE = re.compile(r"\{[^}]*\}")


@dataclass(frozen=True)
class RestPath:
    """One path template and the HTTP methods that bind it."""

    template: str  # as annotated, "/v1/jobs/{job_id}:cancel"
    regex: str  # RE2 for Envoy's safe_regex, matched against the path without its query
    methods: tuple[str, ...]  # upper case, sorted: "GET", "POST"

    @property
    def allow(self) -> str:
        """The `allow` header of a 405 on this path."""
        return ", ".join(self.methods)


def _bindings(rule: http_pb2.HttpRule) -> Iterator[tuple[str, str]]:
    for rule_or_extra in (rule, *rule.additional_bindings):
        kind = rule_or_extra.WhichOneof("pattern")
        if kind in _METHODS:
            yield kind.upper(), getattr(rule_or_extra, kind)


def _regex(template: str) -> str:
    """A variable matches one segment without ':' (so `/v1/jobs/{job_id}` does not take
    `/v1/jobs/X:cancel`, which the transcoder splits into a path and its custom verb)."""
    parts = _VARIABLE.split(template)
    return "^" + "[^/:]+".join(re.escape(part) for part in parts) + "$"


def rest_paths(descriptor_set: Path, services: Iterable[str]) -> list[RestPath]:
    """Every path template the `services` bind, with its methods, in a stable order."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    wanted = set(services)
    methods_of: dict[str, set[str]] = {}
    for file in files.file:
        for service in file.service:
            if f"{file.package}.{service.name}" not in wanted:
                continue
            for method in service.method:
                # The option arrives as an unknown field of MethodOptions; re-parsing with the
                # extension registered (annotations_pb2 is imported) makes it readable.
                options = descriptor_pb2.MethodOptions.FromString(
                    method.options.SerializeToString()
                )
                if not options.HasExtension(annotations_pb2.http):
                    continue
                for verb, template in _bindings(options.Extensions[annotations_pb2.http]):
                    methods_of.setdefault(template, set()).add(verb)
    return [
        RestPath(template=template, regex=_regex(template), methods=tuple(sorted(verbs)))
        for template, verbs in sorted(methods_of.items())
    ]
