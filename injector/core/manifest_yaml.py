"""Reading and writing Kubernetes manifests as YAML that every Kubernetes tool reads back the same.

PyYAML decides whether a string needs quotes by its own YAML 1.1 resolver, which differs from the readers that
matter: Go's (``sigs.k8s.io/yaml`` in kubectl, kustomize and the API server, a YAML 1.1 reader with extras such
as ``5e10`` as a float) and YAML 1.2 readers (``0o644``, ``1e3``). A plain ``5e10`` or ``0o644`` written for a
label or a ConfigMap value would come back as a number, and a Pod whose label is a number is refused. So a
string is written plain only when it cannot be read as anything else by any of them; otherwise it is quoted.
Over-quoting is harmless (a quoted scalar is always a string); under-quoting changes the user's data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml
from yaml import YAMLError as YAMLError

# Any plain scalar some YAML 1.1 / 1.2 / Go reader may resolve to null, a bool, a number or a timestamp.
_WORDS = frozenset(
    w
    for base in ("null", "true", "false", "yes", "no", "on", "off", "y", "n", "nan", "inf")
    for w in (base, base.capitalize(), base.upper())
) | {
    "~",
    "",
    "=",
    "<<",
    ".inf",
    ".Inf",
    ".INF",
    "-.inf",
    "+.inf",
    "-.Inf",
    "+.Inf",
    "-.INF",
    "+.INF",
    ".nan",
    ".NaN",
    ".NAN",
}
_NUMBERISH = re.compile(
    r"""[-+]?(?:
        \.?[0-9][0-9_]*(?:[.:][0-9_]*)*(?:[eE][-+]?[0-9_]*)?   # decimal, float, exponent, sexagesimal, 1_000
      | \.[0-9_]+(?:[eE][-+]?[0-9]+)?                         # .5
      | 0[bBoOxX][0-9a-fA-F_]+                                # 0b1, 0o644, 0x1F
      | \.(?:inf|Inf|INF|nan|NaN|NAN)
    )""",
    re.X,
)
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt ].*)?")


def ambiguous(text: str) -> bool:
    """True when some reader would not read ``text``, written plain, back as this string."""
    # Go's and YAML 1.1's number readers drop every "_" before parsing ("+__2E06" is 2000000).
    return text in _WORDS or bool(_NUMBERISH.fullmatch(text.replace("_", ""))) or bool(_TIMESTAMP.fullmatch(text))


class ManifestLoader(yaml.SafeLoader):
    """SafeLoader, but timestamps stay the strings they were (SafeLoader would make datetimes and change the
    output), a plain ``=`` stays a string (SafeLoader resolves it to YAML 1.1's ``value`` tag and then cannot
    load it), and a plain scalar that PyYAML's resolver takes for a number its converter then rejects (``0b_``,
    ``0x_``) stays a string instead of raising ValueError."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            return self.construct_scalar(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_float(node)
        except ValueError:
            return self.construct_scalar(node)


ManifestLoader.add_constructor("tag:yaml.org,2002:int", ManifestLoader.construct_yaml_int)
ManifestLoader.add_constructor("tag:yaml.org,2002:float", ManifestLoader.construct_yaml_float)
_NOT_RESOLVED = ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")
ManifestLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in _NOT_RESOLVED]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if ambiguous(data):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    return dumper.represent_str(data)


_Dumper.add_representer(str, _represent_str)


def load_all(text: str) -> list[Any]:
    """Every document of a YAML stream (empty documents dropped); raises ``yaml.YAMLError``."""
    return [d for d in yaml.load_all(text, Loader=ManifestLoader) if d is not None]


def dump_all(docs: Iterable[Any]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1 << 20)
