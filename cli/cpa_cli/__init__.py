"""The `cpa` command line: one entry point for planning now, and for server, agent and jobs later.

It sits above the scheduler and the agent (it may import both); neither imports it.
"""
