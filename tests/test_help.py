"""Every ``train --help`` option says what it does, in plain text, with one default at most."""

import argparse
import re
from typing import Dict

import pytest

from torchrec_fusion.cli import build_parser


def _subparsers(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_train_option_has_a_help_text() -> None:
    train = _subparsers(build_parser())["train"]
    flags = [a for a in train._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 60
    missing, doubled, markup = [], [], []
    for a in flags:
        text = a.help or ""
        name = a.option_strings[0]
        # the text itself, without the default argparse would show: at least a few words
        if len(re.sub(r"\(default: [^)]*\)", "", text).split()) < 3:
            missing.append(name)
        if text.count("(default:") > 1:
            doubled.append(name)
        if "`" in text:
            markup.append(name)
    assert not missing, f"options without a help text: {missing}"
    assert not doubled, f"options showing two defaults: {doubled}"
    assert not markup, f"options with RST backticks: {markup}"


def test_help_renders_and_states_each_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    assert "`" not in out
    assert "(default: the first binary task)" in out and "(default: None)" not in out
    assert "--threads" in out and "--verbose" in out and "metrics are still printed" in out


def test_descriptions_are_plain_text() -> None:
    parser = build_parser()
    assert "`" not in (parser.description or "")
    for name, sub in _subparsers(parser).items():
        assert sub.description and "`" not in sub.description, name
