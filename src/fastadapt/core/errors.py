"""Errors a user can act on. Each message is one line: the value, the limit, what to do."""

from __future__ import annotations


class FastAdaptError(ValueError):
    """Base class of fastadapt's user-facing errors (bad input, bad data, bad config)."""


class DataError(FastAdaptError):
    """A data file is missing, corrupted, or an episode request is impossible for the data."""


class ConfigError(FastAdaptError):
    """A configuration key is unknown, of the wrong type, or out of range."""
