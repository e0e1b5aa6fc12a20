"""Command lines that take flags exactly as written (standard library only: the sidecar uses it too).

Go's ``flag`` package, whose spellings the components keep (``-annotation``, ``-hostPort``), never
abbreviates. Python's argparse does: ``allow_abbrev=False`` stops it for ``--long`` options only, and
Python 3.11 still prefix-matches single-dash long options (``-annotatio x`` silently means
``-annotation x``, ``-namespac x`` ``-namespace x``). :class:`ExactArgumentParser` refuses every flag
that is not spelled out, with a clear error and exit code 2, before argparse gets to guess.
"""

from __future__ import annotations

import argparse
import sys


class ExactArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that accepts only flags spelled exactly as declared (``--flag=value`` too)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        known = self._option_string_actions
        commands = {name for a in self._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}
        expects_value = False
        for arg in argv:
            if arg == "--":
                break
            if expects_value:  # the separate value of the previous flag ("-namespace -x" is its value)
                expects_value = False
                continue
            if arg in commands:
                break  # a subcommand's own (exact) parser checks the rest
            if arg.startswith("-") and len(arg) > 1 and not arg[1:2].isdigit():
                name = arg.split("=", 1)[0]
                if name not in known and not _attached_short_value(known, arg):
                    self.error(f"unrecognized arguments: {arg} (flags must be spelled out; see --help)")
                action = known.get(name)
                expects_value = action is not None and "=" not in arg and _takes_one_value(action)
        return super().parse_known_args(argv, namespace)


def _takes_one_value(action: argparse.Action) -> bool:
    return (
        action.nargs is None
        and bool(action.option_strings)
        and not isinstance(
            action, (argparse._StoreConstAction, argparse._HelpAction, argparse._VersionAction, argparse._CountAction)
        )
    )


def _attached_short_value(known: dict, arg: str) -> bool:
    """``-nteam-a``: a one-letter flag with its value attached, as argparse (and getopt) take it. Not
    in a parser with Go-style single-dash long flags: Go never attaches values, and there ``-verbose``
    must not become ``-v erbose``."""
    if arg.startswith("--") or any(len(o) > 2 and o[1] != "-" for o in known):
        return False
    action = known.get(arg[:2])
    return action is not None and _takes_one_value(action)
