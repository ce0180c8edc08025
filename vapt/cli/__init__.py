"""The ``vapt`` command line (:mod:`.subcommands`) and what the ``vapt`` and ``mgpath`` command lines share: the one
error reporter (:mod:`.errors`). Nothing heavy is imported here: subcommands load their modules on use."""
from vapt.cli.subcommands import dispatch, main, run_tool

__all__ = ["dispatch", "main", "run_tool"]
