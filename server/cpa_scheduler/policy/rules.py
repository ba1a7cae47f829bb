"""A compiled policy: the file's rules as sets and tuples, checked against ToDos and requests.

`Policy.decisions` yields every decision (allowed or refused) for the explaining CLI; the
server's checks (`first_refusal`) stop at the first refusal. Field paths are those of the ToDo
(`params.steps[1].url`, `text`) or of the request (`request.text`, `callback_url`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cpa_scheduler.domain import ToDo

from .memo import BoundedMemo
from .model import PiiAction, PolicySpec
from .pii import Detector, Finding, scan

# The actions whose `params.app` names a desktop application (docs/EXECUTOR_GUIDE.md).
DESKTOP_ACTIONS = frozenset({"open_app", "uia"})
# open_app starts the application it names: one without `app` cannot be checked, so it is
# refused under an allowlist; a uia step works on the session's application (checked at start).
_APP_REQUIRED = frozenset({"open_app"})
BROWSER_ACTION = "playwright"
MAIL_ACTION = "send_mail"
RECIPIENT_KEYS = ("to", "cc", "bcc")
_WEB_SCHEMES = frozenset({"http", "https"})
_ACTIONS_REMEMBERED = 4096
_REFUSE = frozenset({PiiAction.REFUSE})
# The actions that change what a view shows (policy/redaction.py).
HIDING = frozenset({PiiAction.REDACT, PiiAction.REFUSE})


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One rule applied to one field: allowed or not, and why. `todo` is "" for the request."""

    rule: str
    field: str
    allowed: bool
    detail: str
    todo: str = ""
    # PII only: what was found (masked samples, never the values) and what it does.
    findings: tuple[Finding, ...] = ()
    action: PiiAction | None = None


@dataclass(frozen=True, slots=True)
class HostList:
    """Hosts as `example.com` (that host) or `*.example.com` (its subdomains, any depth)."""

    exact: frozenset[str]
    suffixes: tuple[str, ...]

    @classmethod
    def of(cls, entries: Sequence[str]) -> HostList:
        return cls(
            exact=frozenset(e for e in entries if not e.startswith("*.")),
            suffixes=tuple(sorted({e[1:] for e in entries if e.startswith("*.")})),
        )

    def allows(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.exact or host.endswith(self.suffixes)


def _app_names(value: str) -> set[str]:
    """What an app value is known by: itself, its file name, and that without `.exe`."""
    lowered = value.strip().lower()
    name = lowered.replace("\\", "/").rsplit("/", 1)[-1]
    return {lowered, name, name.removesuffix(".exe")}


@dataclass(frozen=True, slots=True)
class _PiiRule:
    rule: str
    field: str
    detectors: frozenset[Detector] | None
    action: PiiAction

    def matches(self, path: str) -> bool:
        return self.field in ("*", path) or path.startswith(self.field + ".")

    def may_match_under(self, prefix: str) -> bool:
        """Whether this rule may match `prefix` (plain) or a field inside it."""
        return self.matches(prefix) or self.field.startswith(prefix + ".")


def _plain_path(path: str) -> str:
    """A field path without its indices, as PII rules name fields: `params.steps.value`."""
    parts = []
    for part in path.split("."):
        parts.append(part.split("[", 1)[0])
    return ".".join(p for p in parts if p)


_SCALARS = (int, float, type(None))  # bool is an int


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON-like value with its path; iterative (no recursion limit)."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            yield where, item
        elif isinstance(item, _SCALARS):
            continue  # before the Mapping test: an ABC's isinstance is slow for plain values
        elif isinstance(item, dict | Mapping):
            stack.extend((v, f"{where}.{k}") for k, v in reversed(list(item.items())))
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """One tenant's compiled policy. `source` names the file it came from."""

    source: str
    denied_actions: frozenset[str] = frozenset()
    allowed_apps: frozenset[str] | None = None
    urls: HostList | None = None
    callback_urls: HostList | None = None
    mail_domains: HostList | None = None
    pii_detectors: frozenset[Detector] = frozenset()
    pii_rules: tuple[_PiiRule, ...] = ()
    pii_default: PiiAction = PiiAction.ALLOW
    # Whether any PII rule or the default is not `allow`: views then hide what the policy does
    # not allow (policy/redaction.py); a policy that allows all PII costs the views nothing.
    redacts: bool = field(default=False)
    # The answers of pii_action, pii_acts and pii_acts_under: the same few fields (and
    # top-level params keys) are asked about for every job.
    _actions: BoundedMemo[tuple[str, Detector], tuple[PiiAction, str]] = field(
        default_factory=lambda: BoundedMemo(_ACTIONS_REMEMBERED),
        compare=False,
        hash=False,
        repr=False,
    )
    _acts: BoundedMemo[tuple[str, frozenset[PiiAction]], bool] = field(
        default_factory=lambda: BoundedMemo(_ACTIONS_REMEMBERED),
        compare=False,
        hash=False,
        repr=False,
    )
    _acts_under: BoundedMemo[tuple[str, frozenset[PiiAction]], bool] = field(
        default_factory=lambda: BoundedMemo(_ACTIONS_REMEMBERED),
        compare=False,
        hash=False,
        repr=False,
    )

    @classmethod
    def compile(cls, spec: PolicySpec, *, source: str) -> Policy:
        pii = spec.pii
        rules = tuple(
            _PiiRule(
                rule=f"pii.rules[{index}]",
                field=rule.field,
                detectors=None if rule.detectors is None else frozenset(rule.detectors),
                action=rule.action,
            )
            for index, rule in enumerate(pii.rules if pii else ())
        )
        default = pii.default_action if pii else PiiAction.ALLOW
        return cls(
            source=source,
            denied_actions=frozenset(spec.actions.deny) if spec.actions else frozenset(),
            allowed_apps=(
                frozenset(n for a in spec.apps.allow for n in _app_names(a)) if spec.apps else None
            ),
            urls=HostList.of(spec.urls.allow) if spec.urls else None,
            callback_urls=HostList.of(spec.callback_urls.allow) if spec.callback_urls else None,
            mail_domains=HostList.of(spec.mail.allow_domains) if spec.mail else None,
            pii_detectors=frozenset(pii.detectors) if pii else frozenset(),
            pii_rules=rules,
            pii_default=default,
            redacts=bool(pii) and {default, *(r.action for r in rules)} != {PiiAction.ALLOW},
        )

    # -- the checks ---------------------------------------------------------------------------

    def first_refusal(self, todo: ToDo) -> Decision | None:
        """The first rule `todo` breaks, or None: what submission and dispatch ask."""
        decisions = self.todo_decisions(todo, refusals_only=True)
        return next((d for d in decisions if not d.allowed), None)

    def request_refusal(self, *, text: str = "", callback_url: str = "") -> Decision | None:
        """The first rule the request itself breaks (its text, its callback URL), or None."""
        decisions = self.request_decisions(text=text, callback_url=callback_url, refusals_only=True)
        return next((d for d in decisions if not d.allowed), None)

    def request_decisions(
        self, *, text: str = "", callback_url: str = "", refusals_only: bool = False
    ) -> Iterator[Decision]:
        """The decisions about the request's own fields; `refusals_only`: as todo_decisions'."""
        if callback_url and self.callback_urls is not None:
            yield self._url("callback_urls.allow", self.callback_urls, "callback_url", callback_url)
        if text and (not refusals_only or self.pii_acts("request.text", _REFUSE)):
            yield from self._pii("request.text", text, todo="")

    def todo_decisions(self, todo: ToDo, *, refusals_only: bool = False) -> Iterator[Decision]:
        """Every decision about `todo`, rule by rule, refusals and allowances alike.
        `refusals_only`: PII is looked for only in fields where some detector refuses (the PII
        allowances of the other fields are not reported): what first_refusal needs, cheaper."""
        denied = todo.action in self.denied_actions
        # refusals_only: an allowance nobody reads is not built for every submitted ToDo.
        if self.denied_actions and (denied or not refusals_only):
            yield Decision(
                rule="actions.deny",
                field="action",
                allowed=not denied,
                detail=f"action {todo.action!r} is "
                + ("denied by the policy" if denied else "not denied"),
                todo=todo.id,
            )
        if self.allowed_apps is not None and todo.action in DESKTOP_ACTIONS:
            yield from self._apps(todo)
        if self.urls is not None and todo.action == BROWSER_ACTION:
            for path, value in _strings(todo.params, "params"):
                if path.rsplit(".", 1)[-1] == "url":
                    yield self._url("urls.allow", self.urls, path, value, todo=todo.id)
            for path, value in _urls_not_strings(todo.params):
                yield Decision(
                    rule="urls.allow",
                    field=path,
                    allowed=False,
                    detail=f"a url must be a string, not {type(value).__name__}",
                    todo=todo.id,
                )
        if self.mail_domains is not None and todo.action == MAIL_ACTION:
            yield from self._recipients(todo)
        if self.pii_detectors:
            fields: list[tuple[str, str]] = [("text", todo.text), ("description", todo.description)]
            if todo.selector is not None:
                fields.append(("selector.value", todo.selector.value))
            for key, param in todo.params.items():
                where = f"params.{key}"
                # A value where no rule could act is not walked (most params of most ToDos).
                if not refusals_only or self.pii_acts_under(where, _REFUSE):
                    fields.extend(_strings(param, where))
            for path, value in fields:
                if value and (not refusals_only or self.pii_acts(path, _REFUSE)):
                    yield from self._pii(path, value, todo=todo.id)

    def pii_action(self, path: str, detector: Detector) -> tuple[PiiAction, str]:
        """What PII of `detector` found at `path` does, and the rule that says so."""
        known = self._actions.get((path, detector))
        if known is not None:
            return known
        plain = _plain_path(path)
        answer = next(
            (
                (rule.action, rule.rule)
                for rule in self.pii_rules
                if (rule.detectors is None or detector in rule.detectors) and rule.matches(plain)
            ),
            (self.pii_default, "pii.default_action"),
        )
        return self._actions.remember((path, detector), answer)

    def pii_acts(self, path: str, actions: frozenset[PiiAction]) -> bool:
        """Whether PII of some detector of the policy found at `path` does one of `actions`:
        where none would, a scan cannot change the answer and is skipped (a scan still runs
        with every detector, as their order settles overlapping findings)."""
        key = (path, actions)
        known = self._acts.get(key)
        if known is None:
            known = self._acts.remember(
                key, any(self.pii_action(path, d)[0] in actions for d in self.pii_detectors)
            )
        return known

    def pii_acts_under(self, path: str, actions: frozenset[PiiAction]) -> bool:
        """Whether pii_acts may be true for `path` or some field inside it (`params.lines`,
        `params.lines[0].sku`): False lets a caller skip a whole value. Errs towards True (a
        rule allowing the field first is not taken into account)."""
        key = (path, actions)
        known = self._acts_under.get(key)
        if known is None:
            plain = _plain_path(path)
            detectors = self.pii_detectors
            known = self._acts_under.remember(
                key,
                self.pii_default in actions
                or any(
                    rule.action in actions
                    and (rule.detectors is None or not rule.detectors.isdisjoint(detectors))
                    and rule.may_match_under(plain)
                    for rule in self.pii_rules
                ),
            )
        return known

    # -- rule by rule ----------------------------------------------------------------------

    def _apps(self, todo: ToDo) -> Iterator[Decision]:
        assert self.allowed_apps is not None
        app = todo.params.get("app")
        if app is None:
            if todo.action in _APP_REQUIRED:
                yield Decision(
                    rule="apps.allow",
                    field="params.app",
                    allowed=False,
                    detail=f"{todo.action} names no app, and the policy allows only listed apps",
                    todo=todo.id,
                )
            return
        allowed = isinstance(app, str) and bool(_app_names(app) & self.allowed_apps)
        shown = repr(app[:80]) if isinstance(app, str) else f"a {type(app).__name__}"
        yield Decision(
            rule="apps.allow",
            field="params.app",
            allowed=allowed,
            detail=f"app {shown} is " + ("allowed" if allowed else "not in the allowlist"),
            todo=todo.id,
        )

    @staticmethod
    def _url(rule: str, hosts: HostList, path: str, url: str, *, todo: str = "") -> Decision:
        if url == "about:blank":
            return Decision(rule=rule, field=path, allowed=True, detail="about:blank", todo=todo)
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
        except ValueError:
            parts, host = None, ""
        if parts is None or parts.scheme.lower() not in _WEB_SCHEMES or not host:
            detail = "not an http(s) URL with a host: cannot be checked against the allowlist"
            return Decision(rule=rule, field=path, allowed=False, detail=detail, todo=todo)
        allowed = hosts.allows(host)
        detail = f"host {host[:80]!r} is " + ("allowed" if allowed else "not in the allowlist")
        return Decision(rule=rule, field=path, allowed=allowed, detail=detail, todo=todo)

    def _recipients(self, todo: ToDo) -> Iterator[Decision]:
        assert self.mail_domains is not None
        for key in RECIPIENT_KEYS:
            value = todo.params.get(key)
            if value is None:
                continue
            path = f"params.{key}"
            if isinstance(value, str):
                addresses = [(path, a) for a in value.replace(";", ",").split(",") if a.strip()]
            elif isinstance(value, list | tuple):
                addresses = [(f"{path}[{i}]", a) for i, a in enumerate(value)]
            else:
                addresses = [(path, value)]
            for where, address in addresses:
                yield self._recipient(where, address, todo.id)

    def _recipient(self, path: str, address: Any, todo: str) -> Decision:
        assert self.mail_domains is not None
        rule = "mail.allow_domains"
        if not isinstance(address, str) or "@" not in address:
            detail = "not a mail address: its domain cannot be checked against the allowlist"
            return Decision(rule=rule, field=path, allowed=False, detail=detail, todo=todo)
        domain = address.rsplit("@", 1)[1].strip().rstrip(">").lower()
        allowed = self.mail_domains.allows(domain)
        detail = f"domain {domain[:80]!r} is " + ("allowed" if allowed else "not in the allowlist")
        return Decision(rule=rule, field=path, allowed=allowed, detail=detail, todo=todo)

    def _pii(self, path: str, value: str, *, todo: str) -> Iterator[Decision]:
        findings = scan(value, self.pii_detectors)
        by_rule: dict[tuple[str, PiiAction], list[Finding]] = {}
        for finding in findings:
            action, rule = self.pii_action(path, finding.detector)
            by_rule.setdefault((rule, action), []).append(finding)
        for (rule, action), found in by_rule.items():
            kinds = ", ".join(sorted({f.detector.value for f in found}))
            yield Decision(
                rule=rule,
                field=path,
                allowed=action is not PiiAction.REFUSE,
                detail=f"{kinds} found; {action.value}",
                todo=todo,
                findings=tuple(found),
                action=action,
            )


def _urls_not_strings(params: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """`url` keys of the params whose value is not a string (a list, a mapping, a number)."""
    stack: list[tuple[Any, str]] = [(params, "params")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, Mapping):
            for key, value in item.items():
                if key == "url" and not isinstance(value, str):
                    yield f"{where}.{key}", value
                stack.append((value, f"{where}.{key}"))
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
