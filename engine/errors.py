"""The errors a user's input can raise, at the bottom of the engine so every layer may raise them.

``ttrl`` turns each into one line naming the problem (file, line, field) instead of a traceback: a
``ConfigError`` for an option, a file of options, a run directory or a cluster that cannot be used; a
``DataError`` for a data file or row. ``engine.registry.SpecError`` (a ``module:function`` spec that
does not resolve) is the third, beside the registry that raises it.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the field and what is allowed."""


class DataError(ValueError):
    """A data file or row the engine cannot use; the message says where and what was expected."""
