"""`python -m repogate` runs the command-line interface."""

from repogate.cli.main import main

raise SystemExit(main())
