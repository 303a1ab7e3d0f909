"""docs/annotations.md lists every label and annotation the injector reads or writes."""

from __future__ import annotations

from pathlib import Path

from injector.core import annotations as keys
from injector.core.request import NETWORK_LABEL

DOC = (Path(__file__).resolve().parents[3] / "docs" / "annotations.md").read_text()


def test_every_annotation_name_is_documented() -> None:
    names = [v for k, v in vars(keys).items() if k.isupper() and isinstance(v, str) and "/" in v] + [NETWORK_LABEL]
    assert len(names) > 40
    short = {n: n.rsplit("/", 1)[-1] for n in names}
    missing = [n for n in names if f"`{n}`" not in DOC and f"`{short[n]}`" not in DOC and f", `{short[n]}`" not in DOC]
    assert not missing, f"undocumented in docs/annotations.md: {missing}"
