"""Parameters of the mail actions (ToDo.params), as pydantic models.

The agent's runner validates params against an executor's `params_model` before `run`; the
executors also call `parse_params` themselves, so an older runner that does not validate still
refuses bad params with INVALID_PARAMS naming the field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from cpa_agent.executors.base import ExecutionContext, ExecutorError

INVALID_PARAMS = "INVALID_PARAMS"

# Deliberately loose (the mail system is the judge of an address), but no blanks, no angle
# brackets or separators that would smuggle a second address into one field.
_ADDRESS = re.compile(r"[^@\s<>\"(),;:\\\[\]]+@[^@\s<>\"(),;:\\\[\]]+")
# A user id (GUID) or user principal name; quoted into the URL path anyway.
_MAILBOX = re.compile(r"[A-Za-z0-9._%+'@-]{1,254}")
# A well-known folder name (inbox, sentitems, archive...) or a Graph folder id.
_FOLDER = re.compile(r"[A-Za-z0-9=_+/-]{1,512}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _address(value: str) -> str:
    value = value.strip()
    if len(value) > 254 or not _ADDRESS.fullmatch(value):
        raise ValueError(f"not a mail address: {value[:80]!r}")
    return value


def _mailbox(value: str | None) -> str | None:
    if value is not None and not _MAILBOX.fullmatch(value):
        raise ValueError("a mailbox is a user id or user principal name (no blanks or '/')")
    return value


Address = Annotated[str, AfterValidator(_address)]
Mailbox = Annotated[str | None, AfterValidator(_mailbox)]


def _addresses(value: Any) -> Any:
    # "a@x, b@y" is as good as ["a@x", "b@y"].
    if isinstance(value, str):
        return [part for part in re.split(r"[,;]", value) if part.strip()]
    return value


def _or_one_string(schema: dict[str, Any]) -> None:
    """The JSON schema of `to`/`cc` says what _addresses accepts: the list, or one string of
    addresses separated by ',' or ';'. A plan is checked against this schema (the planner's
    action catalog), so it must take every value the executor takes."""
    listed = {k: v for k, v in schema.items() if k not in ("title", "description", "default")}
    for key in listed:
        del schema[key]
    schema["anyOf"] = [listed, {"type": "string"}]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mailbox: Mailbox = Field(
        default=None, description="Mailbox to use instead of CPA_MAIL_MAILBOX."
    )


class SendMailParams(_Params):
    """send_mail; every ToDo input bound to an artifact (inputs.*.artifact_name) is attached."""

    to: list[Address] = Field(
        min_length=1, max_length=500, description="Recipients.", json_schema_extra=_or_one_string
    )
    cc: list[Address] = Field(
        default_factory=list,
        max_length=500,
        description="Copies.",
        json_schema_extra=_or_one_string,
    )
    subject: str = Field(default="", max_length=998)
    body: str = Field(default="", max_length=1_000_000)
    content_type: Literal["text", "html"] = "text"
    save_to_sent_items: bool = True

    @field_validator("to", "cc", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _addresses(value)

    @field_validator("subject")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if _CONTROL.search(value):
            raise ValueError("the subject may not hold control characters (line breaks)")
        return value


class ReadMailParams(_Params):
    """read_mail: the newest messages of a folder, their attachments saved as artifacts."""

    folder: str = Field(default="inbox", pattern=rf"^{_FOLDER.pattern}$")
    top: int = Field(default=10, ge=1, le=1000)
    unread_only: bool = False
    save_attachments: bool = True


class SearchMailParams(_Params):
    """search_mail: Graph's $search (KQL) over the mailbox's messages."""

    query: str = Field(min_length=1, max_length=512)
    top: int = Field(default=10, ge=1, le=1000)

    @field_validator("query")
    @classmethod
    def _printable(cls, value: str) -> str:
        if _CONTROL.search(value) or not value.strip():
            raise ValueError("the query must be printable text")
        return value


ParamsT = TypeVar("ParamsT", bound=_Params)


def parse_params(ctx: ExecutionContext, model: type[ParamsT]) -> ParamsT:
    """The params as `model`: the runner's parsed instance, or validated here."""
    if isinstance(ctx.parsed_params, model):
        return ctx.parsed_params
    try:
        return model.model_validate(ctx.params)
    except ValidationError as error:
        first = error.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "params"
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise ExecutorError(
            INVALID_PARAMS,
            f"params.{where}: {first['msg']}{more}",
            retryable=False,
            details={"field": f"params.{where}"},
        ) from None
