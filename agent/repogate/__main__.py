"""`python -m repogate` runs the command-line interface."""

from repogate.cli import main

raise SystemExit(main())
