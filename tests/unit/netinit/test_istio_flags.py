"""Every flag istio-iptables 1.28 binds (and pilot-agent's logging flags the injection template passes) is
accepted, with Istio's env var and meaning, or accepted as a documented no-op (docs/netinit.md, docs/compat.md).
Values Istio would refuse are refused with exit 2 (Istio: 255)."""

from __future__ import annotations

import pytest

from netinit.core.config import CaptureConfig, HostFacts, RunOptions, resolve
from netinit.core.flags import parse_options
from netinit.debug.connection import parse_endpoint
from netinit.errors import ConfigError


def opts(argv: list[str], env: dict[str, str] | None = None) -> tuple[CaptureConfig, RunOptions]:
    return resolve(parse_options(argv, env or {}), HostFacts())


# (argv, env, attribute of (cfg, run), expected)
ACCEPTED = [
    ([], {}, "probe_port", 15002),
    (["--iptables-probe-port", "16002"], {}, "probe_port", 16002),
    ([], {"IPTABLES_PROBE_PORT": "17002"}, "probe_port", 17002),
    (["--iptables-probe-port=18002"], {"IPTABLES_PROBE_PORT": "17002"}, "probe_port", 18002),
    ([], {}, "probe_timeout", 5.0),
    (["--probe-timeout", "500ms"], {}, "probe_timeout", 0.5),
    (["--probe-timeout=1m30s"], {}, "probe_timeout", 90.0),
    ([], {"PROBE_TIMEOUT": "2.5s"}, "probe_timeout", 2.5),
    (["--log_output_level=default:info"], {}, "proxy_port", 15001),
    (["--log_output_level", "default:debug,grpc:none,all:warn"], {}, "proxy_port", 15001),
    (["--log_as_json"], {}, "proxy_port", 15001),
    (["--log_as_json=false"], {}, "proxy_port", 15001),
    (["--log_target", "stdout", "--log_target", "/dev/stderr"], {}, "proxy_port", 15001),
    (["--log_stacktrace_level=default:none", "--log_caller=default", "--vklog", "3"], {}, "proxy_port", 15001),
    (["--cni-mode"], {}, "proxy_port", 15001),
    ([], {"CNI_MODE": "true"}, "proxy_port", 15001),
    # -p has no env var in Istio (flag.Bind): ENVOY_PORT is only echoed in its logs.
    ([], {"ENVOY_PORT": "16001"}, "proxy_port", 15001),
    # pflag bools take =true/=false; an explicit false beats the env var.
    (["--dry-run=true"], {}, "dry_run", True),
    (["--run-validation=false"], {"RUN_VALIDATION": "true"}, "run_validation", False),
    (["--dual-stack=1"], {}, "dual_stack", True),
    # The env vars Istio registers for documentation only do nothing.
    ([], {"INBOUND_INTERCEPTION_MODE": "TPROXY"}, "mode", "REDIRECT"),
    ([], {"INBOUND_TPROXY_MARK": "7"}, "tproxy_mark", 1337),
]


@pytest.mark.parametrize(("argv", "env", "attr", "want"), ACCEPTED)
def test_istio_flag_is_accepted_with_its_meaning(argv: list[str], env: dict[str, str], attr: str, want: object) -> None:
    cfg, run = opts(argv, env)
    got = getattr(cfg, attr) if attr in cfg._fields else getattr(run, attr)
    assert got == want


REFUSED = [
    (["--iptables-probe-port", "70000"], {}, "--iptables-probe-port"),
    (["--iptables-probe-port", "0"], {}, "--iptables-probe-port"),
    ([], {"IPTABLES_PROBE_PORT": "x"}, "--iptables-probe-port"),
    (["--probe-timeout", "abc"], {}, "--probe-timeout"),
    (["--probe-timeout", "5"], {}, "--probe-timeout"),  # Go wants a unit
    (["--probe-timeout", "0s"], {}, "--probe-timeout"),
    (["--log_output_level", "default:loud"], {}, "--log_output_level"),
    (["--vklog", "x"], {}, "--vklog"),
    (["--log_as_json=maybe"], {}, "--log_as_json"),
    # Dropped in Istio 1.26 and unknown to 1.28 (an unknown-flag error there too).
    (["--iptables-trace-logging"], {}, "unknown flag: --iptables-trace-logging"),
]


@pytest.mark.parametrize(("argv", "env", "needle"), REFUSED)
def test_values_istio_refuses_are_exit_2(argv: list[str], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        opts(argv, env)
    assert e.value.exit_code == 2 and needle in str(e.value)


def test_injection_template_args_parse() -> None:
    """What Istio's sidecar template passes istio-init (tools/istio-iptables notes, section 6)."""
    args = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*"]
    args += ["-d", "15090,15021,15020", "--log_output_level=default:info"]
    cfg, _ = opts([*args, "--log_as_json", "--run-validation", "--skip-rule-apply"])
    assert cfg.proxy_port == 15001 and cfg.inbound_ports == "*"


def test_ipv6_endpoint_without_brackets_says_to_bracket_it() -> None:
    with pytest.raises(ConfigError) as e:
        parse_endpoint("fd00::1:80", "--dst", need_port=True)
    assert "IPv6 address with a port needs brackets: [fd00::1]:80" in str(e.value)
    assert parse_endpoint("[fd00::1]:80", "--dst", need_port=True)[1] == 80


def test_verify_without_capture_flags_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from netinit.apply.runner import SubprocessRunner
    from netinit.debug import cli

    assert cli.run("verify", [], {}, SubprocessRunner()) == 2
    err = capsys.readouterr().err
    assert "no capture flags given" in err and "--from-pod" in err and "netinit show" in err
