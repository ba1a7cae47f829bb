"""Tests of the executor agent (cpa_agent) against a scripted scheduler on loopback."""
