"""SendMessage: answers any LAM message with a LAM message, as docs/LAM_PROTOCOL.md describes.

A request becomes a job (agree) or is declined (refuse); a cancel cancels its job (confirm or
refuse); a malformed message gets not_understood; anything else is stored in its conversation
and acknowledged (inform when the conversation has a job, confirm otherwise).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import uuid
from datetime import UTC, datetime

from google.protobuf import json_format

from cpa.lam.v1 import lam_message_pb2 as lam
from cpa_scheduler.audit import AuditLog
from cpa_scheduler.callbacks.address_guard import AddressPolicy, check_callback_url
from cpa_scheduler.domain import (
    AuditAction,
    AuditCall,
    DomainError,
    InvalidArgument,
    JobOptions,
    JobSource,
    NotFound,
    Reason,
    SourceKind,
    check_credential_refs,
)
from cpa_scheduler.memory.interface import ConversationEntry, ConversationMemory
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.planning import IntentRequest, PlanRequest, TextRequest, TodoRequest
from cpa_scheduler.settings import Settings
from cpa_scheduler.storage import StoredMessage

from . import convert, proto_values
from .audit_calls import refused
from .ids import bounded_id

log = logging.getLogger(__name__)

SCHEDULER_SENDER = "agent://cpa-scheduler"
_PREFIX = "PERFORMATIVE_"


def _body_of(performative: int) -> str:
    """The body field of a performative: PERFORMATIVE_NOT_UNDERSTOOD -> not_understood."""
    return lam.Performative.Name(performative).removeprefix(_PREFIX).lower()  # type: ignore[arg-type]


class _NotUnderstoodError(Exception):
    def __init__(self, reason: Reason, message: str, field: str) -> None:
        super().__init__(message)
        self.reason, self.message, self.field = reason, message, field


def _lam_field(field: str) -> str:
    """A planner field path as the path inside a LAM request message."""
    if field in ("intent", "intent.name"):
        return "intent"
    if field.startswith("intent.parameters"):
        return "request.parameters" + field.removeprefix("intent.parameters")
    if field.startswith(("todos", "text")):
        return f"request.{field}"
    if field == "callback_url":  # a policy refused the reply_to URL the job calls back
        return "expected.reply_to"
    return field


def _as(audit: AuditCall | None, action: str) -> AuditCall | None:
    return dataclasses.replace(audit, action=action) if audit is not None else None


class LamHandler:
    """Turns inbound LAM messages into actions and replies; stores both in the conversation."""

    def __init__(
        self,
        *,
        orchestrator: Orchestrator,
        settings: Settings,
        audit_log: AuditLog | None = None,
        conversations: ConversationMemory | None = None,
    ) -> None:
        self._orchestrator = orchestrator
        self._conversations = conversations
        self._audit_log = audit_log
        self._settings = settings
        self._callback_policy = AddressPolicy.of(
            allow_private=settings.callback_allow_private,
            allowed_networks=settings.callback_allowed_networks,
        )

    async def handle(
        self,
        message: lam.LamMessage,
        *,
        tenant: str,
        audit: AuditCall | None = None,
        deadline: float | None = None,
    ) -> lam.LamMessage:
        """The reply to `message`. With `audit` (the SendMessage call), a request or cancel is
        audited with the job change it makes, and a refusal or not_understood as a refused call
        (docs/AUDIT.md). `deadline` (time.monotonic()) bounds planning text with a model."""
        if audit is not None and not audit.request_id:
            audit = dataclasses.replace(audit, request_id=message.id)
        try:
            self._check_envelope(message)
            self._check_values(message)
        except _NotUnderstoodError as problem:
            error = InvalidArgument(problem.message, reason=problem.reason, field=problem.field)
            await self._refused(audit, audit.action if audit else "", error)
            return self._reply(
                message,
                not_understood=lam.NotUnderstoodBody(
                    reason=convert.reason_to_proto(problem.reason),
                    message=problem.message,
                    field=problem.field,
                ),
            )
        if message.security.tenant and message.security.tenant != tenant:
            denied = DomainError(
                f"the message acts for tenant {message.security.tenant!r}, not the caller's",
                reason=Reason.PERMISSION_DENIED,
                field="security.tenant",
            )
            await self._refused(audit, audit.action if audit else "", denied)
            return self._refusal(message, denied)
        conversation_id = message.correlation.conversation_id or message.id
        job_id = ""
        if message.performative == lam.PERFORMATIVE_REQUEST:
            reply, job_id = await self._request(
                message,
                tenant,
                conversation_id,
                _as(audit, AuditAction.LAM_REQUEST),
                deadline=deadline,
            )
        elif message.performative == lam.PERFORMATIVE_CANCEL:
            reply, job_id = await self._cancel(
                message, tenant, conversation_id, _as(audit, AuditAction.LAM_CANCEL)
            )
        else:
            reply = await self._acknowledge(message, tenant, conversation_id)
        await self._store(message, tenant, conversation_id, job_id, inbound=True)
        await self._store(reply, tenant, conversation_id, job_id, inbound=False)
        await self._remember(message, reply, tenant, conversation_id, job_id)
        return reply

    async def _remember(
        self,
        message: lam.LamMessage,
        reply: lam.LamMessage,
        tenant: str,
        conversation_id: str,
        job_id: str,
    ) -> None:
        """The exchange in the conversation's short-term memory, for the planner. Best effort:
        the messages are stored already, and a memory outage must not fail the call."""
        if self._conversations is None:
            return
        try:
            for sent, role in ((message, "user"), (reply, "scheduler")):
                performative = lam.Performative.Name(sent.performative).removeprefix(_PREFIX)
                text = sent.request.text if sent.HasField("request") else performative.lower()
                data = {"message_id": sent.id, "performative": performative, "job_id": job_id}
                await self._conversations.append(
                    tenant,
                    conversation_id,
                    ConversationEntry(role=role, text=text, data=data),  # type: ignore[arg-type]
                )
        except Exception:
            log.warning("conversation %s not remembered", conversation_id, exc_info=True)

    # -- checks -------------------------------------------------------------------------------

    def _check_envelope(self, message: lam.LamMessage) -> None:
        for field in ("id", "sender"):
            if not getattr(message, field):
                raise _NotUnderstoodError(Reason.MALFORMED_MESSAGE, f"{field} is required", field)
        # Identifiers, stored with the job and echoed in every reply: bounded as ids are.
        correlation = message.correlation
        for field, value in (
            ("id", message.id),
            ("sender", message.sender),
            ("correlation.conversation_id", correlation.conversation_id),
            ("correlation.reply_with", correlation.reply_with),
            ("correlation.in_reply_to", correlation.in_reply_to),
        ):
            try:
                bounded_id(value, field)
            except InvalidArgument as error:
                raise _NotUnderstoodError(Reason.MALFORMED_MESSAGE, error.message, field) from None
        if message.performative == lam.PERFORMATIVE_UNSPECIFIED:
            raise _NotUnderstoodError(
                Reason.MALFORMED_MESSAGE, "performative is required", "performative"
            )
        if message.performative not in lam.Performative.values():
            raise _NotUnderstoodError(
                Reason.UNSUPPORTED_PERFORMATIVE,
                f"performative {message.performative} is not known to this server",
                "performative",
            )
        body = message.WhichOneof("body")
        expected = _body_of(message.performative)
        if body is not None and body != expected:
            raise _NotUnderstoodError(
                Reason.MALFORMED_MESSAGE,
                f"a {expected} message cannot carry a {body} body",
                body,
            )

    @staticmethod
    def _check_values(message: lam.LamMessage) -> None:
        """Every text, JSON value, time and duration anywhere in the message: it is stored as it
        came, and a value that cannot be written back (NaN, too deep, out of range) would poison
        the conversation; a text with U+0000 cannot be stored in PostgreSQL (SendMessage leaves
        this check to us: decoded_service.py)."""
        try:
            proto_values.check_text(message)
            proto_values.check_message(message, "")
        except InvalidArgument as error:
            raise _NotUnderstoodError(error.reason, error.message, error.field) from None

    # -- performatives ------------------------------------------------------------------------

    async def _refused(
        self, audit: AuditCall | None, action: str, error: DomainError, *, job_id: str = ""
    ) -> None:
        """Audit a refusal of the message (bounded per principal)."""
        if audit is not None and self._audit_log is not None:
            call = dataclasses.replace(audit, action=action)
            await refused(self._audit_log, call, error, job_id=job_id)

    async def _request(
        self,
        message: lam.LamMessage,
        tenant: str,
        conversation_id: str,
        audit: AuditCall | None,
        *,
        deadline: float | None,
    ) -> tuple[lam.LamMessage, str]:
        try:
            request, source, options = self._work_of(message)
            credential_refs = dict(message.security.credential_refs)
            check_credential_refs(credential_refs, "security.credential_refs", "the message")
            job, created = await self._orchestrator.schedule(
                tenant=tenant,
                request=request,
                source=source,
                options=options,
                request_id=message.id,
                request_fingerprint=self._fingerprint(message),
                conversation_id=conversation_id,
                credential_refs=credential_refs,
                audit=audit,
                deadline=deadline,
            )
        except DomainError as error:
            error.field = (
                "id" if error.reason is Reason.REQUEST_ID_REUSED else _lam_field(error.field)
            )
            await self._refused(audit, AuditAction.LAM_REQUEST, error)
            return self._refusal(message, error), ""
        reply = self._reply(
            message,
            conversation_id=conversation_id,
            agree=lam.AgreeBody(job_id=job.job_id, duplicate=not created),
        )
        return reply, job.job_id

    def _work_of(self, message: lam.LamMessage) -> tuple[PlanRequest, JobSource, JobOptions]:
        body = message.request
        parameters = proto_values.struct_to_dict(body.parameters, "request.parameters")
        request: PlanRequest
        if body.todos:
            request = TodoRequest(convert.todos_from_proto(body.todos, "request.todos"))
            source = JobSource(kind=SourceKind.TODOS)
        elif message.intent:
            request = IntentRequest(message.intent, parameters)
            source = JobSource(kind=SourceKind.INTENT, intent=message.intent, parameters=parameters)
        elif body.text.strip():
            request = TextRequest(body.text)
            source = JobSource(kind=SourceKind.TEXT, text=body.text)
        else:
            raise InvalidArgument(
                "a request needs request.todos, an intent or request.text",
                reason=Reason.MISSING_FIELD,
                field="request",
            )
        now = datetime.now(UTC)
        deadline = None
        if message.expected.HasField("deadline"):
            deadline = proto_values.time_from_proto(message.expected.deadline, "expected.deadline")
            if deadline <= now:
                raise InvalidArgument(
                    f"deadline {deadline.isoformat()} has already passed",
                    field="expected.deadline",
                )
        reply_to = message.expected.reply_to
        check_callback_url(reply_to, "expected.reply_to", self._callback_policy)
        options = JobOptions(
            max_parallelism=self._settings.default_max_parallelism,
            context=proto_values.struct_to_dict(message.context, "context"),
            deadline=deadline,
            callback_url=reply_to,
            # Only with a callback: what its messages are addressed to and answer.
            callback_receiver=message.sender if reply_to else "",
            callback_in_reply_to=(message.correlation.reply_with or message.id) if reply_to else "",
        )
        return request, source, options

    @staticmethod
    def _fingerprint(message: lam.LamMessage) -> str:
        # Only what defines the work: a resend may carry a fresh ts or reply_with.
        work = lam.LamMessage(
            intent=message.intent,
            payload=message.payload,
            context=message.context,
            expected=message.expected,
            request=message.request,
        )
        if message.security.credential_refs:
            # Only when set, so the fingerprints of requests without any stay as they were.
            work.security.credential_refs.update(message.security.credential_refs)
        return hashlib.sha256(work.SerializeToString(deterministic=True)).hexdigest()

    async def _cancel(
        self,
        message: lam.LamMessage,
        tenant: str,
        conversation_id: str,
        audit: AuditCall | None,
    ) -> tuple[lam.LamMessage, str]:
        job_id = (
            message.cancel.job_id
            or await self._orchestrator.store.conversation_job(tenant, conversation_id)
            or ""
        )
        if not job_id:
            error = NotFound(
                "no job to cancel: name cancel.job_id or use the request's conversation",
                reason=Reason.JOB_NOT_FOUND,
                field="cancel.job_id",
            )
            await self._refused(audit, AuditAction.LAM_CANCEL, error)
            return self._refusal(message, error), ""
        try:
            await self._orchestrator.cancel(
                tenant, job_id, reason=message.cancel.reason, audit=audit
            )
        except DomainError as error:
            if error.field in ("job_id", "reason"):
                error.field = f"cancel.{error.field}"
            await self._refused(audit, AuditAction.LAM_CANCEL, error, job_id=job_id)
            return self._refusal(message, error), job_id
        reply = self._reply(
            message,
            conversation_id=conversation_id,
            confirm=lam.ConfirmBody(subject=job_id, message="cancellation requested"),
        )
        return reply, job_id

    async def _acknowledge(
        self, message: lam.LamMessage, tenant: str, conversation_id: str
    ) -> lam.LamMessage:
        job_id = await self._orchestrator.store.conversation_job(tenant, conversation_id)
        if job_id:
            try:
                job = await self._orchestrator.get_job(tenant, job_id)
            except NotFound:
                job_id = None
            else:
                return self._reply(
                    message,
                    conversation_id=conversation_id,
                    inform=lam.InformBody(job_id=job_id, job_state=job.state.value),
                )
        return self._reply(
            message,
            conversation_id=conversation_id,
            confirm=lam.ConfirmBody(subject=message.id, message="stored"),
        )

    # -- replies ------------------------------------------------------------------------------

    def _refusal(self, message: lam.LamMessage, error: DomainError) -> lam.LamMessage:
        return self._reply(
            message,
            refuse=lam.RefuseBody(
                reason=convert.reason_to_proto(error.reason),
                message=error.message,
                field=error.field,
            ),
        )

    def _reply(
        self,
        message: lam.LamMessage,
        *,
        conversation_id: str = "",
        agree: lam.AgreeBody | None = None,
        refuse: lam.RefuseBody | None = None,
        confirm: lam.ConfirmBody | None = None,
        inform: lam.InformBody | None = None,
        not_understood: lam.NotUnderstoodBody | None = None,
    ) -> lam.LamMessage:
        reply = lam.LamMessage(
            id=uuid.uuid4().hex,
            sender=SCHEDULER_SENDER,
            receivers=[message.sender] if message.sender else [],
            correlation=lam.Correlation(
                conversation_id=conversation_id
                or message.correlation.conversation_id
                or message.id,
                in_reply_to=message.correlation.reply_with or message.id,
            ),
        )
        reply.ts.GetCurrentTime()
        for performative, body in (
            (lam.PERFORMATIVE_AGREE, agree),
            (lam.PERFORMATIVE_REFUSE, refuse),
            (lam.PERFORMATIVE_CONFIRM, confirm),
            (lam.PERFORMATIVE_INFORM, inform),
            (lam.PERFORMATIVE_NOT_UNDERSTOOD, not_understood),
        ):
            if body is not None:
                reply.performative = performative
                getattr(reply, _body_of(performative)).CopyFrom(body)
        return reply

    async def _store(
        self,
        message: lam.LamMessage,
        tenant: str,
        conversation_id: str,
        job_id: str,
        *,
        inbound: bool,
    ) -> None:
        await self._orchestrator.store.save_message(
            StoredMessage(
                tenant=tenant,
                conversation_id=conversation_id,
                message_id=message.id,
                performative=lam.Performative.Name(message.performative).removeprefix(_PREFIX)
                if message.performative in lam.Performative.values()
                else str(message.performative),
                sender=message.sender,
                inbound=inbound,
                job_id=job_id,
                body_json=json_format.MessageToJson(message, indent=None),
                create_time=datetime.now(UTC),
            )
        )
