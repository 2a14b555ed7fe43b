"""The command line: verbs and the text they print. It only translates; the work
is done by the engine, and a running daemon is asked rather than bypassed.
"""

from repogate.cli.main import main

__all__ = ["main"]
