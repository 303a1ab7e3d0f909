"""``netinit show`` and ``netinit verify``, pure, plus the three commands' CLI in the modes that need no privileges
(rules from flags or from a saved dump) and the start-up contract (the apply path never imports them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab import netlab
from netinit.__main__ import main
from netinit.core.config import HostFacts, config_from_flags
from netinit.core.plan import Family, plan
from netinit.debug.show import ANNOTATIONS, reconstruct
from netinit.debug.verify import compare, diff_rules
from netinit.rules.save import planned_save
from tests.support.cases import CASES

ISTIO = list(netlab.SIDECAR_ARGS)
FLAGS = [*ISTIO, "-x", "10.0.0.0/8", "-o", "8081"]


def saved(flags: list[str], env: dict[str, str] | None = None, facts: HostFacts | None = None) -> dict[Family, str]:
    rs = plan(config_from_flags(flags, env or {}, facts or HostFacts()))
    return {fam: planned_save(rs.family(fam)) for fam in rs.families()}


# --- show -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_show_round_trips_every_planner_case(name: str) -> None:
    flags, env, facts = CASES[name]
    original = plan(config_from_flags(flags, env, facts))
    rec = reconstruct({fam: planned_save(original.family(fam)) for fam in original.families()})
    assert rec.found and rec.reproducible and rec.findings == ()
    again = plan(config_from_flags(list(rec.argv), dict(rec.env), rec.facts))
    assert (again.v4, again.v6) == (original.v4, original.v6)


def test_show_reads_istio_defaults_as_flags_and_annotations() -> None:
    rec = reconstruct(saved([*ISTIO, "-x", "10.0.0.0/8", "-d", "15090,15021,8443,15020"]))
    assert rec.argv == (
        *("-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "10.0.0.0/8"),
        *("-b", "*", "-d", "15090,15021,8443,15020"),
    )
    assert rec.annotations == {
        "sidecar.istio.io/interceptionMode": "REDIRECT",
        "traffic.sidecar.istio.io/includeOutboundIPRanges": "*",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8",
        "traffic.sidecar.istio.io/includeInboundPorts": "*",
        "traffic.sidecar.istio.io/excludeInboundPorts": "8443",
    }


def test_annotation_names_are_the_injectors() -> None:
    from injector.core import annotations as keys

    names = {
        keys.INTERCEPTION_MODE,
        keys.INCLUDE_OUTBOUND_IP_RANGES,
        keys.EXCLUDE_OUTBOUND_IP_RANGES,
        keys.INCLUDE_INBOUND_PORTS,
        keys.EXCLUDE_INBOUND_PORTS,
        keys.INCLUDE_OUTBOUND_PORTS,
        keys.EXCLUDE_OUTBOUND_PORTS,
        keys.KUBEVIRT_INTERFACES,
        keys.EXCLUDE_INTERFACES,
    }
    assert set(ANNOTATIONS.values()) == names


def test_show_flags_foreign_and_unreproducible_rules() -> None:
    texts = saved(FLAGS)
    texts[4] = texts[4].replace("*nat\n", "*nat\n:KUBE-SVC - [0:0]\n-A PREROUTING -p tcp -m tcp --dport 99 -j ACCEPT\n")
    texts[4] = texts[4].replace(
        "--dport 8081 -j RETURN\n-A ISTIO_OUTPUT -p udp", "--dport 8082 -j RETURN\n-A ISTIO_OUTPUT -p udp"
    )
    rec = reconstruct(texts)
    assert not rec.reproducible
    assert "IPv4 nat KUBE-SVC: foreign chain (0 rules): not netinit's" in rec.findings
    assert "IPv4 nat PREROUTING #1: foreign rule, not netinit's: -A PREROUTING -p tcp -m tcp --dport 99 -j ACCEPT" in (
        rec.findings
    )
    assert any(
        f.startswith("not reproducible: IPv4 nat ISTIO_OUTPUT: rule #2 changed (8082 -> 8081)") for f in rec.findings
    )


def test_show_without_rules_of_ours() -> None:
    rec = reconstruct({4: "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"})
    assert not rec.found and rec.argv == () and rec.findings == ("no rules of netinit's in this namespace",)


# --- verify ---------------------------------------------------------------------------------------------------


def _edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


def test_verify_passes_on_the_plan() -> None:
    rs = plan(config_from_flags(FLAGS))
    report = compare(rs, saved(FLAGS))
    assert report.ok and report.drift == () and report.checked == ("IPv4 nat",)


LO_RETURN = "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n"
UID_RETURN = "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"


@pytest.mark.parametrize(
    ("old", "new", "kind", "detail"),
    [
        (LO_RETURN, "", "missing", "missing rule (planned #10): -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"),
        (
            LO_RETURN,
            LO_RETURN + "-A ISTIO_OUTPUT -d 10.9.0.0/16 -j RETURN\n",
            "extra",
            "extra rule #11: -A ISTIO_OUTPUT -d 10.9.0.0/16 -j RETURN",
        ),
        (UID_RETURN, "", "reordered", "reordered: rule #3 is planned as #6"),
        (
            "--dport 8081 -j RETURN\n-A ISTIO_OUTPUT -p udp",
            "--dport 8082 -j RETURN\n-A ISTIO_OUTPUT -p udp",
            "changed",
            "(8081 -> 8082)",
        ),
        (
            "-A OUTPUT -j ISTIO_OUTPUT\n",
            "-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\n",
            "extra",
            "OUTPUT: extra rule #2",
        ),
    ],
    ids=["deleted", "extra", "reordered", "changed-port", "duplicate-jump"],
)
def test_verify_names_each_kind_of_drift(old: str, new: str, kind: str, detail: str) -> None:
    text = saved(FLAGS)[4]
    text = _edit(text, old, new)
    if kind == "reordered":  # move the proxy-uid RETURN up, above the passthrough rule
        text = _edit(text, "-A ISTIO_OUTPUT -s 127.0.0.6/32", UID_RETURN + "-A ISTIO_OUTPUT -s 127.0.0.6/32")
    report = compare(plan(config_from_flags(FLAGS)), {4: text})
    assert not report.ok
    assert [d.kind for d in report.drift] == [kind]
    assert detail in report.drift[0].describe()


def test_verify_missing_and_extra_chains_and_foreign_rules() -> None:
    rs = plan(config_from_flags(FLAGS))
    text = saved(FLAGS)[4]
    no_chain = _edit(text, "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n", "")
    no_chain = _edit(no_chain, ":ISTIO_IN_REDIRECT - [0:0]\n", "")
    kinds = {d.kind for d in compare(rs, {4: no_chain}).drift}
    assert "missing-chain" in kinds
    extra_chain = _edit(text, "COMMIT", ":ISTIO_DIVERT - [0:0]\nCOMMIT")
    assert [d.kind for d in compare(rs, {4: extra_chain}).drift] == ["extra-chain"]
    foreign = _edit(text, "-A OUTPUT -j ISTIO_OUTPUT\n", "-A OUTPUT -o eth9 -j ACCEPT\n-A OUTPUT -j ISTIO_OUTPUT\n")
    report = compare(rs, {4: foreign})
    assert report.ok  # foreign rules are not drift ...
    assert report.warnings == (  # ... but one in front of ours can take traffic before capture sees it
        "IPv4 nat OUTPUT: foreign rule #1 comes before netinit's rules (traffic it takes never reaches capture): "
        "-A OUTPUT -o eth9 -j ACCEPT",
    )


def test_verify_warns_about_ipv6_rules_the_plan_does_not_program() -> None:
    six = saved(ISTIO, facts=HostFacts(has_global_ipv4=False, has_global_ipv6=True))[6]
    report = compare(plan(config_from_flags(ISTIO)), {4: saved(ISTIO)[4], 6: six})
    assert report.ok and len(report.warnings) == 1 and report.warnings[0].startswith("IPv6 holds rules of netinit's")


def test_diff_rules() -> None:
    assert diff_rules(list("ABCD"), list("ABCD")) == []
    assert [e.kind for e in diff_rules(list("ABCD"), list("ABD"))] == ["missing"]
    assert [(e.kind, e.planned, e.live_pos) for e in diff_rules(list("ABCD"), list("DABC"))] == [("reordered", "D", 1)]
    assert [(e.kind, e.planned, e.live) for e in diff_rules(list("ABCD"), list("AXCD"))] == [("changed", "B", "X")]
    assert [e.live_pos for e in diff_rules(["A"], ["A", "Z"], [3, 7])] == [7]


# --- the CLI without privileges -------------------------------------------------------------------------------


def test_explain_from_flags_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["explain", "--direction", "outbound", "--dst", "1.2.3.4:80", "--uid", "1000", "--json", *FLAGS])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert doc["verdict"]["summary"] == "captured → outbound listener 15001 (original destination kept)"
    assert doc["rules"]["source"] == "plan"
    assert "assuming 1.2.3.4 is not an address of this pod (else pass --out-iface lo)" in doc["notes"]


def test_explain_show_verify_from_a_saved_dump(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dump = tmp_path / "nat.save"
    dump.write_text(saved(FLAGS)[4])
    rc = main(["explain", "--rules-file", str(dump), "--direction", "inbound", "--dst", "10.1.1.1:15020"])
    text = capsys.readouterr().out
    assert rc == 0 and "verdict: bypass: excluded inbound port 15020 (from -d / excludeInboundPorts)" in text
    assert main(["show", "--rules-file", str(dump), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["argv"][-2:] == ["-o", "8081"] and doc["reproducible"]
    assert main(["verify", "--rules-file", str(dump), *FLAGS]) == 0
    assert capsys.readouterr().out.endswith("ok: the live rules are as planned\n")
    assert main(["verify", "--rules-file", str(dump), *FLAGS, "-o", "8082"]) == 1
    assert "rule #1 changed (8082 -> 8081)" in capsys.readouterr().out


ROOT = Path(__file__).resolve().parents[3]


def kube_inject(manifest: Path, *flags: str) -> str:
    """The injected manifest, as ``sidecar-injector kube-inject -f FILE`` writes it (netinit never injects)."""
    p = subprocess.run(
        [sys.executable, "-m", "injector", "kube-inject", "-f", str(manifest), *flags],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


POD = (
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  annotations:\n"
    "    traffic.sidecar.istio.io/excludeOutboundPorts: '5432'\n"
    "spec:\n  containers:\n  - name: app\n    image: app\n"
)


def test_verify_from_pod_reads_an_injected_pods_istio_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "pod.yaml"
    plain.write_text(POD)
    injected = tmp_path / "injected.yaml"
    injected.write_text(kube_inject(plain))
    as_json = tmp_path / "injected.json"  # what kubectl get pod -o json gives
    as_json.write_text(json.dumps(yaml.safe_load(injected.read_text())))
    expected = saved([*ISTIO, "-x", "", "-o", "5432"])[4]
    assert "--dport 5432 -j RETURN" in expected
    dump = tmp_path / "nat.save"
    dump.write_text(expected)
    for manifest in (injected, as_json):
        assert main(["verify", "--from-pod", str(manifest), "--rules-file", str(dump), "--json"]) == 0, manifest
        doc = json.loads(capsys.readouterr().out)
        assert doc["ok"] and "-o 5432" in doc["flags"]
    dump.write_text(saved(ISTIO)[4])
    assert main(["verify", "--from-pod", str(injected), "--rules-file", str(dump)]) == 1
    assert "missing rule (planned #1): -A ISTIO_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN" in capsys.readouterr().out


def test_verify_from_pod_refuses_an_uninjected_pod(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "pod.yaml"
    plain.write_text(POD)
    dump = tmp_path / "nat.save"
    dump.write_text(saved(ISTIO)[4])
    assert main(["verify", "--from-pod", str(plain), "--rules-file", str(dump)]) == 2
    err = capsys.readouterr().err
    assert "it is not injected" in err and f"sidecar-injector kube-inject -f {plain}" in err
    assert main(["verify", "--from-pod", str(plain), "--config-dir", str(tmp_path), "--rules-file", str(dump)]) == 2
    assert "--config-dir is no longer taken" in capsys.readouterr().err


def test_verify_from_pod_reads_istio_validation_and_workload_templates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init = {"name": "istio-validation", "args": ["istio-iptables", *ISTIO, "--run-validation", "--skip-rule-apply"]}
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "spec": {"template": {"spec": {"initContainers": [init], "containers": [{"name": "app"}]}}},
    }
    manifest = tmp_path / "deploy.json"
    manifest.write_text(json.dumps({"kind": "List", "items": [deploy]}))
    dump = tmp_path / "nat.save"
    dump.write_text(saved(ISTIO)[4])
    assert main(["verify", "--from-pod", str(manifest), "--rules-file", str(dump), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and "flags from the istio-validation container (the pod has no istio-init)" in doc["notes"]


def test_verify_from_pod_reads_a_cni_mode_pods_istio_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pod injected in CNI mode (values pilot.cni.enabled) has istio-validation, not istio-init: its capture
    flags are what the CNI plugin should have programmed, and verify checks the rules against them."""
    plain = tmp_path / "pod.yaml"
    plain.write_text(POD)
    config = tmp_path / "config"
    config.mkdir()
    (config / "values.yaml").write_text("pilot:\n  cni:\n    enabled: true\n")
    injected = tmp_path / "injected.json"
    injected.write_text(json.dumps(yaml.safe_load(kube_inject(plain, "--config-dir", str(config)))))
    inits = [c["name"] for c in json.loads(injected.read_text())["spec"]["initContainers"]]
    assert inits == ["istio-validation"]
    dump = tmp_path / "nat.save"
    dump.write_text(saved([*ISTIO, "-x", "", "-o", "5432"])[4])
    assert main(["verify", "--from-pod", str(injected), "--rules-file", str(dump), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and "-o 5432" in doc["flags"]
    assert "flags from the istio-validation container (the pod has no istio-init)" in doc["notes"]
    dump.write_text(saved(ISTIO)[4])  # the CNI plugin programmed other flags: drift, named
    assert main(["verify", "--from-pod", str(injected), "--rules-file", str(dump)]) == 1
    assert "missing rule (planned #1): -A ISTIO_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN" in capsys.readouterr().out


def test_verify_from_pod_needs_neither_the_injector_nor_pyyaml(tmp_path: Path) -> None:
    """The init image carries netinit without dependencies: JSON works there, YAML says to pass JSON."""
    plain = tmp_path / "pod.yaml"
    plain.write_text(POD)
    injected = tmp_path / "injected.yaml"
    injected.write_text(kube_inject(plain))
    as_json = tmp_path / "injected.json"
    as_json.write_text(json.dumps(yaml.safe_load(injected.read_text())))
    dump = tmp_path / "nat.save"
    dump.write_text(saved([*ISTIO, "-x", "", "-o", "5432"])[4])
    code = (
        "import sys\n"
        "sys.modules['yaml'] = None  # not installed\n"
        "from netinit.__main__ import main\n"
        "rcs = [main(['verify', '--from-pod', f, '--rules-file', sys.argv[1]]) for f in sys.argv[2:]]\n"
        "print('RCS', rcs, 'INJECTOR', [m for m in sys.modules if m.split('.')[0] == 'injector'], file=sys.stderr)\n"
    )
    argv = [sys.executable, "-c", code, str(dump), str(as_json), str(injected)]
    p = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False, timeout=60)
    assert "RCS [0, 2] INJECTOR []" in p.stderr, p.stderr
    assert "reading YAML needs PyYAML, which is not installed here: pass the pod as JSON" in p.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "--direction", "outbound", "--dst", "nonsense"], "invalid value for --dst: 'nonsense'"),
        (["explain", "--dst", "1.1.1.1:80"], "the following arguments are required: --direction"),
        (["explain", "--direction", "outbound", "--dst", "1.1.1.1:80", "-p", "0"], "invalid value for -p/--envoy-port"),
        (["show", "-i", "*"], "netinit show: unrecognized arguments: -i *"),
        (["verify", "--from-pod", "/nonexistent.yaml"], "cannot read /nonexistent.yaml"),
    ],
)
def test_bad_input_exits_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_plain_flag_form_is_untouched_and_never_imports_the_debug_commands() -> None:
    code = (
        "import sys\n"
        "from netinit.__main__ import main\n"
        f"rc = main(['-n', *{ISTIO!r}])\n"
        "mods = [m for m in sys.modules if m.split('.')[:2] == ['netinit', 'debug']]\n"
        "print('RC', rc, 'MODS', mods, file=sys.stderr)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60)
    assert "RC 0 MODS []" in p.stderr, p.stderr
    assert p.stdout.startswith("# IPv4: iptables-restore --noflush <<EOF\n*nat\n")


def test_from_pod_finds_the_pod_of_every_kind_the_injector_injects() -> None:
    """One table of workload kinds serves kube-inject and --from-pod (an OpenShift DeploymentConfig's pod was not
    found by --from-pod while kube-inject injected it)."""
    from netinit.debug.pod import iter_pods

    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}
    dc = {"apiVersion": "apps.openshift.io/v1", "kind": "DeploymentConfig", "spec": {"template": pod}}
    assert list(iter_pods(dc)) == [pod]
