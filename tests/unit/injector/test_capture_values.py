"""One validator for capture values: whatever the injector admits, istio-init (netinit) accepts.

The injector checks the traffic annotations with netinit's own validator (`netinit.core.values`); this property
test ties the two together end to end: random annotation values, injection, and - when the pod is admitted -
netinit's real flag parsing and validation over the exact args the injector rendered for istio-init.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from injector.core import annotations as keys
from injector.core.config import load_config
from injector.core.inject import inject
from injector.core.request import Request
from injector.errors import AnnotationError
from netinit.__main__ import main as netinit_main

CFG = load_config(None, env={})
CAPTURE_ANNOTATIONS = [
    keys.INCLUDE_OUTBOUND_IP_RANGES,
    keys.EXCLUDE_OUTBOUND_IP_RANGES,
    keys.INCLUDE_INBOUND_PORTS,
    keys.EXCLUDE_INBOUND_PORTS,
    keys.INCLUDE_OUTBOUND_PORTS,
    keys.EXCLUDE_OUTBOUND_PORTS,
    keys.EXCLUDE_INTERFACES,
    keys.KUBEVIRT_INTERFACES,
    keys.REROUTE_VIRTUAL_INTERFACES,
]
ITEM = st.one_of(
    st.from_regex(r"[a-zA-Z0-9@+._:\-]{1,18}", fullmatch=True),  # interface-ish, with the characters that differ
    st.from_regex(r"[0-9]{1,6}([-:][0-9]{1,6})?", fullmatch=True),  # ports and ranges
    st.from_regex(r"([0-9]{1,3}\.){3}[0-9]{1,3}(/[0-9]{1,2})?|[0-9a-f:]{2,12}(/[0-9]{1,3})?", fullmatch=True),
    st.just("*"),
)
VALUE = st.lists(ITEM, min_size=1, max_size=3).map(",".join)


def _pod(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }


def _netinit_accepts(args: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = netinit_main([*args, "--dry-run"], env={})
    return rc, err.getvalue()


@settings(max_examples=400, deadline=None)
@given(annotations=st.dictionaries(st.sampled_from(CAPTURE_ANNOTATIONS), VALUE, min_size=1, max_size=4))
def test_whatever_the_injector_admits_netinit_accepts(annotations: dict[str, str]) -> None:
    try:
        pod = inject(Request(pod=_pod(annotations), namespace="ns", config=CFG)).pod
    except AnnotationError:
        return  # refused before anything was created: fine
    (init,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "istio-init"]
    rc, err = _netinit_accepts(init["args"])
    assert rc == 0, f"admitted {annotations}, but istio-init would exit {rc}: {err}"


def test_port_ranges_are_admitted_and_reach_netinit() -> None:
    """Deliberate difference (docs/compat.md): Istio's injector refuses port ranges in these annotations,
    although istio-iptables' flags take them; here the annotation takes what the flag takes."""
    pod = inject(Request(pod=_pod({keys.EXCLUDE_OUTBOUND_PORTS: "1000-2000"}), namespace="ns", config=CFG)).pod
    (init,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "istio-init"]
    assert init["args"][init["args"].index("-o") + 1] == "1000-2000"
    assert _netinit_accepts(init["args"])[0] == 0
