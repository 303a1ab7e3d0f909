"""Backend detection, with a scripted Runner and a fake PATH (no iptables touched)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from netinit.apply.iptables import Backend, RestoreApplier, detect_backend
from netinit.apply.runner import Completed
from netinit.errors import BackendError

EMPTY = "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"
WITH_RULES = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE\nCOMMIT\n"


class Scripted:
    def __init__(self, outputs: dict[str, Completed]) -> None:
        self.outputs = outputs
        self.calls: list[str] = []

    def run(self, argv: Sequence[str], stdin: str | None = None) -> Completed:
        self.calls.append(argv[0])
        return self.outputs[argv[0]]


def which_all(name: str) -> str | None:
    return f"/usr/sbin/{name}"


def test_legacy_wins_only_when_it_holds_rules() -> None:
    r = Scripted({"iptables-legacy-save": Completed(0, WITH_RULES, ""), "iptables-nft-save": Completed(0, EMPTY, "")})
    backend, state = detect_backend(r, which=which_all)
    assert backend.flavor == "legacy" and state == WITH_RULES
    assert r.calls == ["iptables-legacy-save"]  # nft is not even probed
    r = Scripted({"iptables-legacy-save": Completed(0, EMPTY, ""), "iptables-nft-save": Completed(0, EMPTY, "")})
    backend, state = detect_backend(r, which=which_all)
    assert backend.flavor == "nft" and state == EMPTY


def test_legacy_is_the_fallback_when_nft_fails() -> None:
    r = Scripted({"iptables-legacy-save": Completed(0, EMPTY, ""), "iptables-nft-save": Completed(1, "", "no nft")})
    assert detect_backend(r, which=which_all)[0].flavor == "legacy"


def test_nothing_usable_names_what_is_missing() -> None:
    r = Scripted({})
    with pytest.raises(BackendError) as e:
        detect_backend(r, which=lambda name: None)
    assert "iptables-legacy-save" in str(e.value) and "iptables-nft-restore" in str(e.value)
    assert "apt-get install iptables" in str(e.value)
    with pytest.raises(BackendError) as e:
        detect_backend(Scripted({"iptables-nft-save": Completed(4, "", "nat table missing")}), "nft", which_all)
    assert "nat table missing" in str(e.value)


def test_not_root_says_it_needs_privilege_not_install_iptables() -> None:
    denied = {
        "iptables-legacy-save": Completed(
            1, "", "Failed to list table names in /proc/net/ip_tables_names: Permission denied"
        ),
        "iptables-nft-save": Completed(
            4, "", "Could not fetch rule set generation id: Permission denied (you must be root)"
        ),
    }
    for forced in (None, "nft"):
        with pytest.raises(BackendError) as e:
            detect_backend(Scripted(denied), forced, which_all)
        assert "needs root, or CAP_NET_ADMIN" in str(e.value) and "apt-get install" not in str(e.value)


def test_probe_read_serves_the_first_snapshot_only() -> None:
    r = Scripted({"iptables-nft-save": Completed(0, EMPTY, "")})
    backend, state = detect_backend(r, "nft", which_all)
    applier = RestoreApplier(backend, r, state)
    assert applier.save(4) == EMPTY and r.calls == ["iptables-nft-save"]
    applier.save(4)
    assert r.calls == ["iptables-nft-save", "iptables-nft-save"]


def test_an_empty_legacy_kernel_answers_the_legacy_probe_without_a_process() -> None:
    # A fresh pod namespace: /proc/net/ip_tables_names is empty, so iptables-legacy-save would print nothing.
    def legacy_empty(flavor: str, fam: int) -> bool:
        return flavor == "legacy"

    r = Scripted({"iptables-nft-save": Completed(0, EMPTY, "")})
    backend, state = detect_backend(r, which=which_all, known_empty=legacy_empty)
    assert backend.flavor == "nft" and state == EMPTY
    assert r.calls == ["iptables-nft-save"]
    r = Scripted({"iptables-nft-save": Completed(1, "", "no nft")})
    backend, state = detect_backend(r, which=which_all, known_empty=legacy_empty)
    assert (backend.flavor, state, r.calls) == ("legacy", "", ["iptables-nft-save"])  # the fallback, unprobed
    r = Scripted({})
    assert detect_backend(r, "legacy", which_all, known_empty=legacy_empty) == (Backend("legacy"), "")
    assert r.calls == []
    # The binaries must still be there: the shortcut answers the probe, not the install.
    with pytest.raises(BackendError, match="iptables-legacy-restore"):
        detect_backend(Scripted({}), "legacy", lambda name: None, known_empty=legacy_empty)


def test_a_namespace_with_no_tables_needs_no_save_at_all() -> None:
    # Both flavours empty (a fresh pod): nft is chosen, as istio-iptables would, and neither the probe nor the
    # snapshot starts a process; a family the kernel did not call empty is still read.
    r = Scripted({})
    backend, state = detect_backend(r, which=which_all, known_empty=lambda flavor, fam: True)
    assert (backend, state, r.calls) == (Backend("nft"), "", [])
    applier = RestoreApplier(backend, r, state, known_empty=lambda flavor, fam: fam == 4)
    assert applier.save(4) == "" and applier.save(4) == "" and r.calls == []
    r.outputs["ip6tables-nft-save"] = Completed(0, EMPTY, "")
    assert applier.save(6) == EMPTY and r.calls == ["ip6tables-nft-save"]
