"""The exception tree of netinit; each family maps to one documented exit code.

- ``ConfigError`` (exit 2): a flag, env var or environment fact is unusable; nothing was touched.
  ``InvalidValue`` is the one for a bad value (``netinit.core.values``): it carries the setting, value and why.
- ``ApplyError`` (exit 1): applying failed; the namespace was rolled back to its snapshot.
- ``BackendError`` (exit 1): no usable iptables backend; the message names what is missing.
- ``DriftError`` (exit 1): our rules exist but differ from the plan and neither
  ``--reconcile`` nor ``--force-apply`` was given; nothing was touched.
- ``ValidationFailed`` (exit 126): rules applied, but the capture probe did not see traffic as expected.
"""

from __future__ import annotations


class NetinitError(Exception):
    exit_code = 1


class ConfigError(NetinitError):
    exit_code = 2


class InvalidValue(ConfigError):
    """A setting's value is not valid; ``flag`` names the setting (a flag, env var or annotation)."""

    def __init__(self, flag: str, value: str, why: str) -> None:
        super().__init__(f"netinit: invalid value for {flag}: {value!r} ({why})")
        self.flag = flag
        self.value = value
        self.why = why


class ApplyError(NetinitError):
    exit_code = 1


class BackendError(NetinitError):
    exit_code = 1


class DriftError(NetinitError):
    exit_code = 1


class ValidationFailed(NetinitError):
    exit_code = 126
