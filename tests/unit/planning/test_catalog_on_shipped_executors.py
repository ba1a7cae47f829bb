"""Every intent of the shipped catalog plans only actions a shipped executor serves, with params
that executor's own model accepts: what `cpa plan` shows, an agent of ours can run."""

from __future__ import annotations

import pytest

from cpa_agent.executors.base import Executor
from cpa_agent.executors.browser import BrowserSettings, browser_executors
from cpa_agent.executors.builtin import executors as builtin_executors
from cpa_agent.executors.mail import MailSettings
from cpa_agent.executors.mail import executors as mail_executors
from cpa_agent.executors.params import parse_params
from cpa_agent.runner import action_name, struct_to_dict
from cpa_scheduler.api import convert
from cpa_scheduler.planning import load_default_catalog
from cpa_scheduler.planning.intent_catalog import Intent

# A plausible value per parameter name the shipped intents require; a new required parameter
# without one here fails below, naming it.
SAMPLE_VALUES = {
    "recipient": "accounting@example.com",
    "month": "November 2026",
    "document": "invoice 42",
    "query": "framework agreement",
}


def shipped_executors() -> dict[str, Executor]:
    mail_settings = MailSettings(
        authority_host="https://login.example",
        tenant_id="contoso",
        client_id="client",
        client_secret="not-a-real-secret",
        graph_url="https://graph.example/v1.0",
        mailbox="mailer@example.com",
    )
    # Built only: no browser is launched and no token asked for until an action runs.
    offered = [
        *builtin_executors(),
        *browser_executors(BrowserSettings()),
        *mail_executors(mail_settings),
    ]
    return {executor.action: executor for executor in offered}


@pytest.mark.parametrize("intent", load_default_catalog().intents, ids=lambda intent: intent.name)
def test_every_task_of_the_intent_runs_on_a_shipped_executor(intent: Intent) -> None:
    executors = shipped_executors()
    missing = [p.name for p in intent.parameters if p.required and p.name not in SAMPLE_VALUES]
    assert not missing, f"add sample values for {missing}"
    # As the planner binds them: the required ones given, the others at their defaults.
    values = {p.name: SAMPLE_VALUES[p.name] for p in intent.parameters if p.required}
    values |= {p.name: p.default for p in intent.parameters if p.has_default}

    todos = intent.render(values, context={})

    for todo in todos:
        message = convert.todo_to_proto(todo)
        action = action_name(message)
        executor = executors.get(action)
        assert executor is not None, f"{intent.name}.{todo.id}: no shipped executor for {action!r}"
        model = getattr(executor, "params_model", None)
        assert model is not None, f"{action!r} declares no params model"
        # Raises InvalidParams naming the field when the template plans params it refuses.
        parse_params(model, message, struct_to_dict(message.params))
