"""Planning: turns a request (text, an intent name, ToDos) into a task graph, by YAML rules
and, for free text with a language model configured, the LLM router and task planner
(llm_planning.py; docs/PLANNING.md). The domain stays free of YAML, Jinja2 and the model.
"""

from __future__ import annotations

from .catalog_loading import load_catalog, load_default_catalog, parse_catalog
from .catalog_yaml import CatalogError
from .intent_catalog import UNKNOWN_INTENT, Intent, IntentCatalog, Parameter, TaskTemplate
from .intent_router import Candidate, RouteResult, RuleIntentRouter
from .patterns import Pattern
from .planner import IntentRequest, Plan, Planner, PlanRequest, TextRequest, TodoRequest
from .templates import RenderLimits

# Planning: any request in, a checked task graph out.
__all__ = ["IntentRequest", "Plan", "PlanRequest", "Planner", "TextRequest", "TodoRequest"]
# Routing: text or an intent name in, rendered ToDos out.
__all__ += ["UNKNOWN_INTENT", "Candidate", "RenderLimits", "RouteResult", "RuleIntentRouter"]
# Catalog: loading a YAML catalog and the checked intents it holds.
__all__ += [
    "CatalogError",
    "Intent",
    "IntentCatalog",
    "Parameter",
    "Pattern",
    "TaskTemplate",
    "load_catalog",
    "load_default_catalog",
    "parse_catalog",
]
