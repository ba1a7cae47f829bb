"""`python -m cpa_cli` runs the `cpa` command."""

from cpa_cli.main import main

raise SystemExit(main())
