"""Every shared option is declared once (ckptkit/core/options.py): the CLI's flags are made from the declarations,
and the public functions check their keywords against the same fields."""
import argparse
import os

import pytest

from ckptkit import cli
from ckptkit.core import options
from ckptkit.core.errors import CkptkitError
from conftest import FIXTURE

pytestmark = pytest.mark.fast
DIGITS = os.path.join(os.path.dirname(FIXTURE), "..", "digits", "broken")
DECLARED = {f.flag: f for f in options.ALL_TOPOLOGY + options.DATA + (options.BUILDER_ARG,)
            + tuple(options.SHARED.values())}


def _subcommands():
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_every_command_takes_each_shared_flag_as_declared():
    """Same help (a command fills only its placeholders and the unset default), choices and type wherever a
    command takes the flag: a second declaration with its own words would differ here."""
    seen = set()
    for name, parser in _subcommands().items():
        for action in parser._actions:
            flag = next((s for s in action.option_strings if s in DECLARED), None)
            if flag is None:
                continue
            f = DECLARED[flag]
            seen.add(flag)
            head = f.help.split("{")[0]
            assert action.help.startswith(head), (name, flag, action.help)
            assert action.dest == f.dest and tuple(action.choices or ()) == tuple(f.choices or ()), (name, flag)
            assert action.type is f.type, (name, flag)
    assert seen == set(DECLARED), f"declared but taken by no command: {sorted(set(DECLARED) - seen)}"


def test_the_check_can_fail(monkeypatch):
    """A command declaring --seed itself, with other words, is caught by the test above."""
    real = cli.build_parser

    def drifted():
        parser = real()
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        action = next(a for a in sub.choices["diagnose"]._actions if "--seed" in a.option_strings)
        action.help = "a seed of its own"
        return parser

    monkeypatch.setattr(cli, "build_parser", drifted)
    with pytest.raises(AssertionError, match="--seed"):
        test_every_command_takes_each_shared_flag_as_declared()


def test_inspect_takes_a_topology_or_its_keywords():
    import ckptkit

    meta = os.path.join(DIGITS, "model.ckpt.meta")
    typed = ckptkit.inspect_checkpoint(DIGITS, topology=options.Topology(meta=meta))
    assert typed == ckptkit.inspect_checkpoint(DIGITS, meta=meta)
    with pytest.raises(TypeError, match="batch_size"):
        ckptkit.inspect_checkpoint(DIGITS, batch_size=8)  # a data option: not inspect's


def test_fold_refuses_a_frozen_graph_by_name(tmp_path):
    import ckptkit

    with pytest.raises(CkptkitError, match="not a frozen graph"):
        ckptkit.fold_checkpoint(FIXTURE, str(tmp_path / "f" / "model.ckpt"), frozen="frozen.pb")
    with pytest.raises(TypeError, match="preprocess"):
        ckptkit.fold_checkpoint(FIXTURE, str(tmp_path / "f" / "model.ckpt"), preprocess="unit")
    assert not os.listdir(tmp_path)
