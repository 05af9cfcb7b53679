from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path

import pytest

from ocireg import __version__
from ocireg.api.durations import format_duration, parse_duration, renew_margin
from ocireg.cli import HelpFormatter, build_parser, config_from_args, main
from ocireg.settings import LogFormat

ROOT = Path(__file__).resolve().parents[2]


def _config(*argv: str):
    return config_from_args(build_parser().parse_args(["run", *argv]))


def test_default_scope_is_the_whole_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OCIREG_NAMESPACES", raising=False)
    config = _config()
    assert config.clusterwide
    assert config.namespaces == ()
    assert config.log_format is LogFormat.plain


def test_namespaces_from_flags_override_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OCIREG_NAMESPACES", "env-a,env-b")
    assert _config().namespaces == ("env-a", "env-b")
    assert _config("-n", "a", "-n", "b", "-n", "a").namespaces == ("a", "b")


def test_all_namespaces_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCIREG_NAMESPACES", "env-a")
    assert _config("--all-namespaces").clusterwide


def test_scope_flags_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "-n", "a", "-A"])


def test_run_options() -> None:
    config = _config(
        "--log-format",
        "json",
        "--liveness",
        "http://0.0.0.0:8080/healthz",
        "--credentials-namespace",
        "platform",
    )
    assert config.log_format is LogFormat.json
    assert config.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert config.credentials_namespace == "platform"
    assert not config.leader_elect


def test_leader_election_defaults_to_the_credentials_namespace() -> None:
    config = _config("--leader-elect", "--credentials-namespace", "platform")
    assert config.leader_elect
    assert config.leader_election_namespace == "platform"
    assert config.leader_election_id == "ocireg-leader"


def test_leader_election_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCIREG_LEADER_ELECT", "true")
    monkeypatch.setenv("OCIREG_LEADER_ELECTION_NAMESPACE", "ops")
    monkeypatch.setenv("OCIREG_LEADER_ELECTION_ID", "ocireg-a")
    config = _config()
    assert (config.leader_elect, config.leader_election_namespace) == (True, "ops")
    assert config.leader_election_id == "ocireg-a"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "10", "1d", "-5m", "h", "5 m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_renew_margin() -> None:
    twelve_hours = parse_duration("12h")
    assert renew_margin("20%", twelve_hours) == parse_duration("2h24m")
    assert renew_margin("2h", twelve_hours) == parse_duration("2h")
    assert renew_margin("24h", twelve_hours) == twelve_hours
    with pytest.raises(ValueError, match="between 1% and 99%"):
        renew_margin("0%", twelve_hours)
    assert format_duration(parse_duration("1h30m")) == "1h30m"


def test_the_command_lines_defaults_are_the_settings_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ocireg run` with no flags and no OCIREG_* variables is OperatorConfig() exactly: the
    defaults are written once, in settings.py."""
    import os

    from ocireg.cli import build_parser as parser
    from ocireg.settings import OperatorConfig

    for name in [n for n in os.environ if n.startswith("OCIREG_")]:
        monkeypatch.delenv(name)
    parsed = config_from_args(parser().parse_args(["run"]))
    # The one field derived at parse time: the Lease lives beside the credentials.
    assert parsed.leader_election_namespace == parsed.credentials_namespace
    expected = OperatorConfig(leader_election_namespace=parsed.credentials_namespace)
    assert parsed == expected


# ------------------------------------------------------------------------------ --help


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["run", "check", "status", "crds"])
def test_every_option_has_help_and_shows_its_default(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("OCIREG_"):
            monkeypatch.delenv(name)
    parser = _subparsers(build_parser())[command]
    formatter = parser._get_formatter()
    assert isinstance(formatter, HelpFormatter)
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        text = formatter._get_help_string(action) % {"default": action.default}
        if not action.help or "default:" not in text:
            missing.append((action.option_strings, text))
    assert missing == []
    shown = parser.format_help()
    assert "default: " in shown


def test_help_shows_the_settings_default_and_the_variable_set_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OCIREG_CONCURRENCY", "3")
    monkeypatch.delenv("OCIREG_RESYNC_SECONDS", raising=False)
    run = _subparsers(build_parser())["run"]
    text = " ".join(run.format_help().split())
    # The default is the settings' own; the override is named, with its value, never
    # passed off as the default.
    assert "(default: 16; env OCIREG_CONCURRENCY, set now: 3)" in text
    assert "(default: 300.0; env OCIREG_RESYNC_SECONDS)" in text
    assert _config().concurrency == 3


def test_version_flag_and_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"ocireg {__version__}"
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"ocireg {__version__}"


def test_kubectl_plugin_entry_point_is_the_same_command() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-ocireg"] == scripts["ocireg"] == "ocireg.cli:main"
