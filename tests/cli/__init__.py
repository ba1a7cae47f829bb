"""Tests of the `cpa` command line: real processes where behaviour is process-level, else main()."""
