"""Errors flowalign raises for bad input: each message names the input and what was expected."""


class FlowAlignError(ValueError):
    """Base class for user-facing input errors."""


class ConfigError(FlowAlignError):
    """A configuration value is missing, unknown or out of range."""


class UnsupportedModelError(FlowAlignError):
    """A pipeline folder or object is of a family flowalign has no adapter for."""
