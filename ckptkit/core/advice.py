"""Advice that names a flag names one the command accepts.

An error or warning that says `pass --outputs NAME` is only help if the command that printed it takes
`--outputs`; one that spells a whole command (`ckptkit recalibrate CKPT --data DIR`) must be a command line that
parses. `unaccepted_flags` checks a printed text against the parser: the flags after `ckptkit COMMAND` against
that command, every other flag against the command that is running. The CLI records what fails the check, and
with CKPTKIT_CHECK_ADVICE=1 (the test suite sets it) a run that printed such advice ends in an AssertionError.
"""
from __future__ import annotations

import argparse
import re

_COMMAND = re.compile(r"ckptkit ([a-z][a-z-]*)([^;()]*)")
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _accepted(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def unaccepted_flags(text: str, parser: argparse.ArgumentParser, command: str) -> list[str]:
    """The flags `text` advises that the command meant would reject ("--x", or "ckptkit CMD --x")."""
    commands = _subcommands(parser)
    current = _accepted(commands[command]) if command in commands else _accepted(parser)
    bad, spans = [], []
    for m in _COMMAND.finditer(text):
        sub = commands.get(m.group(1))
        if sub is None:
            continue
        spans.append(m.span(2))
        bad += [f"ckptkit {m.group(1)} {f}" for f in _FLAG.findall(m.group(2)) if f not in _accepted(sub)]
    for m in _FLAG.finditer(text):
        if not any(a <= m.start() < b for a, b in spans) and m.group(0) not in current:
            bad.append(m.group(0))
    return bad
