"""Outbound callbacks: the messages of jobs with a callback URL, kept in an outbox written with
the job change that caused them, and delivered (signed, retried, dead-lettered) by one
deliverer per replica. docs/CALLBACKS.md describes the behaviour.

Modules: address_guard (the SSRF guard), messages (the LAM messages; protobuf), signing,
backoff, keys, sender (the HTTPS POST), deliverer (the background task), outbox (ListCallbacks,
RetryCallbacks). Nothing is imported here: the API layer imports address_guard, and messages
imports the API layer.
"""
