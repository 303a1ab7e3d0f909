"""The injector's exceptions.

Two families, as an admission webhook must tell them apart: `Refused` means *this pod* cannot be injected as
asked (a bad annotation, an unknown template) and becomes ``allowed: false`` with the message; `ConfigError`
means the injector's own configuration is broken and is reported to the operator, never blamed on a pod.
"""

from __future__ import annotations


class InjectorError(Exception):
    """Base of everything the injector raises on purpose."""


class ConfigError(InjectorError):
    """The config directory (config.yaml, values.yaml, templates) is unreadable or invalid."""


class Refused(InjectorError):
    """This pod cannot be injected as asked; the message is shown to the user."""


class AnnotationError(Refused):
    """An annotation or label the injector reads has a value it cannot accept."""

    def __init__(self, name: str, value: str, why: str) -> None:
        self.name, self.value, self.why = name, value, why
        shown = value if len(value) <= 80 else value[:77] + "..."
        super().__init__(f"invalid annotation {name}={shown!r}: {why}")


class TemplateError(Refused):
    """A requested template is unknown, refused this pod, or rendering it failed."""


class TemplateBroken(TemplateError):
    """The template itself is broken (does not compile, or renders invalid YAML): the operator's problem, which
    a config check catches before any pod meets it."""
