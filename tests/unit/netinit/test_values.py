"""``netinit.core.values``: the public validator the flags and the injector's annotations share."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from netinit.core import values
from netinit.errors import ConfigError, InvalidValue


def test_values_normalise_as_the_rules_print_them() -> None:
    assert values.ports("-b", " 80, 8000-8080,9090:9090,,") == ("80", "8000:8080", "9090")
    assert values.ports_or_all("-b", " * ") == "*"
    assert values.interfaces("-c", "eth0,veth.1") == ("eth0", "veth.1")
    assert values.cidrs("-x", "10.1.2.3/8, fd00::1/8") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert values.cidrs_or_all("-i", "*") == "*"
    assert values.ids("-g", "7,proxy", {"proxy": 102}, "gid") == ("7", "102")
    assert values.port("-p", " 15001 ") == 15001
    assert values.bounded_int("-t", "1337", 1, 2**32 - 1) == 1337


@pytest.mark.parametrize(
    ("call", "value", "why"),
    [
        (lambda: values.ports("-b", "80,0"), "0", "port must be an integer 1-65535"),
        (lambda: values.ports("-b", "90-80"), "90-80", "range start is after its end"),
        (lambda: values.interfaces("-c", "eth0,not an iface"), "not an iface", "interface names match"),
        (lambda: values.cidrs("-x", "10.0.0.0/33"), "10.0.0.0/33", "expected a CIDR"),
        (lambda: values.ids("-u", "nobody-here", {}, "uid"), "nobody-here", "not a numeric uid"),
        (lambda: values.bounded_int("-r", "0", 1, 9), "0", "expected an integer 1-9"),
    ],
)
def test_a_bad_value_names_the_setting_and_the_value(call: Callable[[], object], value: str, why: str) -> None:
    with pytest.raises(InvalidValue) as e:
        call()
    assert isinstance(e.value, ConfigError) and e.value.exit_code == 2
    assert (e.value.value, e.value.flag) == (value, str(e.value).split(" for ")[1].split(":")[0])
    assert why in e.value.why and str(e.value).startswith(f"netinit: invalid value for {e.value.flag}: {value!r} (")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10.1.2.3", (4, "10.1.2.3", None)),
        ("10.1.2.3/8", (4, "10.0.0.0", 8)),
        ("10.1.2.3/32", (4, "10.1.2.3", 32)),
        ("0.0.0.0/0", (4, "0.0.0.0", 0)),
        ("::127.0.0.53", (6, "::127.0.0.53", None)),  # libc's form; ipaddress would say ::7f00:35
        ("::7f00:35/128", (6, "::127.0.0.53", 128)),
        ("2001:DB8:0:0:1::1/64", (6, "2001:db8::", 64)),
        ("fd00::1/7", (6, "fc00::", 7)),
    ],
)
def test_address_text_is_the_form_iptables_save_and_nft_print(text: str, want: tuple[int, str, int | None]) -> None:
    assert values.address_text(text) == want


@pytest.mark.parametrize("text", ["10.0.0.256", "10.0.0.0/33", "::/129", "10.0.0.0/-1", "10.0.0.0/+8", "eth0", ""])
def test_address_text_refuses_what_is_not_an_address(text: str) -> None:
    with pytest.raises(ValueError, match="not an address or CIDR"):
        values.address_text(text)
