"""netinit's command-line grammar: pflag's (istio-iptables' flag library), read by ``netinit.core.flags``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from netinit.core.flags import _BOOL_FLAGS, _STR_FLAGS, help_text, parse_flags, parse_options
from netinit.errors import ConfigError


@pytest.mark.parametrize(
    "argv",
    [
        ["--envoy-port", "15111"],
        ["--envoy-port=15111"],
        ["-p", "15111"],
        ["-p15111"],
        ["-p=15111"],
        ["-p", "1", "-p", "15111"],  # the last occurrence wins
    ],
)
def test_value_forms(argv: list[str]) -> None:
    assert parse_flags(argv)[0] == {"envoy_port": "15111"}


def test_a_value_flag_takes_the_next_argument_whatever_it_looks_like() -> None:
    # pflag does; argparse refused "-1" as "expected one argument". Validation judges the value later.
    values, _bools, _targets = parse_flags(["-x", "-1", "-b", "--dry-run"])
    assert values == {"service_exclude_cidr": "-1", "inbound_ports": "--dry-run"}


def test_empty_values_are_values() -> None:
    assert parse_flags(["-x", "", "--istio-service-cidr="])[0] == {"service_exclude_cidr": "", "service_cidr": ""}


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["--dry-run"], True),
        (["-n"], True),
        (["--dry-run=true"], True),
        (["--dry-run=1"], True),
        (["-n=false"], False),
        (["--dry-run=False"], False),
        (["--dry-run", "--dry-run=false"], False),  # the last occurrence wins
    ],
)
def test_boolean_forms(argv: list[str], want: bool) -> None:
    assert parse_flags(argv)[1] == {"dry_run": want}


def test_a_boolean_never_takes_the_next_argument() -> None:
    with pytest.raises(ConfigError, match="unexpected argument 'true'"):
        parse_flags(["--dry-run", "true"])


def test_an_explicit_false_beats_the_env_var() -> None:
    assert not parse_options(["--redirect-dns=false"], {"REDIRECT_DNS": "true"}).flags["redirect_dns"]
    assert parse_options([], {"REDIRECT_DNS": "true"}).flags["redirect_dns"]


def test_grouped_shorthands() -> None:
    values, bools, _targets = parse_flags(["-np", "15111"])
    assert values == {"envoy_port": "15111"} and bools == {"dry_run": True}


def test_log_target_repeats() -> None:
    assert parse_flags(["--log_target", "stdout", "--log_target=/dev/null"])[2] == ["stdout", "/dev/null"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--envoy", "15001"], "unknown flag: --envoy"),  # no abbreviations (argparse took them; pflag does not)
        (["--dry"], "unknown flag: --dry"),
        (["-y"], "unknown flag: -y"),
        (["--envoy-port"], "flag needs an argument: --envoy-port"),
        (["-p"], "flag needs an argument: -p"),
        (["--dry-run=maybe"], "invalid value for --dry-run: 'maybe' (expected true or false)"),
        (["---envoy-port", "1"], "bad flag syntax: ---envoy-port"),
        (["15001"], "unexpected argument '15001'"),
        (["--", "-p", "15001"], "unexpected argument '-p'"),
        (["-"], "unexpected argument '-'"),
        (["--applier", "libiptc"], "invalid value for --applier: 'libiptc' (expected restore or iptc)"),
    ],
)
def test_refused_with_a_message(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_flags(argv)
    assert message in str(e.value) and e.value.exit_code == 2


def test_double_dash_alone_ends_the_flags() -> None:
    assert parse_flags(["-p", "15111", "--"])[0] == {"envoy_port": "15111"}


def test_help_lists_every_flag_and_its_env_var() -> None:
    text = help_text()
    for _dest, short, long, env, _help in _STR_FLAGS:
        assert f"{short + ', ' if short else ''}{long} VALUE" in text
        assert not env or f"[${env}]" in text
    for _dest, short, long, env, _fallback, _help in _BOOL_FLAGS:
        assert long in text and (not short or f"{short}, {long}" in text)
        assert not env or f"[${env}]" in text
    assert "--pid VALUE" in text and "--applier VALUE" in text and "-h, --help" in text


def test_help_exits_0_on_stdout() -> None:
    for flag in ("-h", "--help"):
        res = subprocess.run([sys.executable, "-m", "netinit", "-p", "1", flag], capture_output=True, text=True)
        assert res.returncode == 0 and res.stdout.startswith("usage: netinit [FLAGS]") and not res.stderr


@pytest.mark.parametrize("mode", [[], ["--native-nftables"]])
def test_the_apply_path_imports_neither_typing_nor_argparse_nor_re(mode: list[str]) -> None:
    """The start-up budget (docs/benchmarks.md §3): these cost more than the rest of netinit's imports."""
    root = str(Path(__file__).resolve().parents[3])
    code = (  # -S: no site, so no editable-install finder (which imports re and pathlib itself); the repo on the path
        f"import sys; sys.path.insert(0, {root!r})\n"
        "from netinit.__main__ import main\n"
        f"main({mode!r} + ['--dry-run', '-p', '15001', '-z', '15006', '-u', '1337', '-m', 'REDIRECT', '-i', '*',"
        " '-x', '', '-b', '*', '-d', '15090,15021,15020'])\n"
        "heavy = ('typing', 'argparse', 're', 'ipaddress', 'functools', 'subprocess', 'socket', 'collections')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.splitlines()[-1] == "[]", res.stdout
