"""Errors raised by the profilers; each message is one line that says how to fix the problem.

They subclass ``ValueError`` so that ``profilers`` stays independent of any caller's error types;
callers (the ``lana`` CLI) turn them into their own one-line errors.
"""


class ProfilerError(ValueError):
    """Base class of every error the profilers raise on purpose."""


class PresetError(ProfilerError):
    """A device preset that cannot be found or parsed."""


class UnknownPresetError(PresetError):
    """A device name that is neither a known preset nor a TOML file; the message lists valid names."""


class BackendUnavailableError(ProfilerError):
    """A backend whose library or hardware is missing on this machine; the message says what to install."""


class BuildError(ProfilerError):
    """A model the backend could not load or build (bad ONNX, unsupported op); recorded, not fatal."""
