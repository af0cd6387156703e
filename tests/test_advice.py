"""Advice names flags the command accepts (issue 38.2: `fold` advised `--outputs`, which it rejected). The whole
suite runs with CKPTKIT_CHECK_ADVICE=1 (conftest), so every error and warning printed by a test's CLI run is
checked against the parser; these tests check the checker."""
import pytest

from ckptkit.core.advice import unaccepted_flags
from ckptkit.cli import build_parser

pytestmark = pytest.mark.fast


def test_a_flag_the_running_command_rejects_is_caught():
    parser = build_parser()
    assert unaccepted_flags("cannot tell the output: pass --outputs NAME", parser, "inspect") == ["--outputs"]
    assert unaccepted_flags("cannot tell the output: pass --outputs NAME", parser, "fold") == []
    assert unaccepted_flags("pass --outputs NAME", parser, "to-onnx") == []


def test_a_spelled_out_command_is_checked_against_that_command():
    parser = build_parser()
    ok = "statistics were never updated: ckptkit recalibrate model.ckpt --data DIR --preprocess unit -o OUT"
    assert unaccepted_flags(ok, parser, "fold") == []  # --data belongs to recalibrate, not to fold
    wrong = "fix: ckptkit inspect model.ckpt --data DIR; then pass --no-verify"
    assert unaccepted_flags(wrong, parser, "to-onnx") == ["ckptkit inspect --data"]


def test_a_run_that_advises_a_rejected_flag_fails_in_the_suite(monkeypatch, capsys):
    import logging

    from ckptkit import cli

    monkeypatch.setattr(cli, "cmd_inspect", lambda args: logging.getLogger("ckptkit").warning(
        "pass --no-verify to skip it") or 0)
    parser_fn = cli.build_parser

    def patched():
        p = parser_fn()
        for action in p._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict) and "inspect" in action.choices:
                action.choices["inspect"].set_defaults(func=cli.cmd_inspect)
        return p

    monkeypatch.setattr(cli, "build_parser", patched)
    with pytest.raises(AssertionError, match="--no-verify"):
        cli.main(["inspect", "fixtures/digits/broken"])
