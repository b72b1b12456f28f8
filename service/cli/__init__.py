"""The ``ctdd`` command line: every sub-command is defined here and calls into the other rooms."""

from ctdd.cli.main import main

__all__ = ["main"]
