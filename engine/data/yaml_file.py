"""A YAML file holding one flat mapping: what a run's config file and a suite file both are.

Every failure (missing file, invalid YAML, not a mapping, unknown keys) raises the caller's error
class with the file's path in the message, so a typo in a config or suite file is one clear line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_mapping(path: str | Path, known, *, what: str, item: str, hint: str, error: type[Exception]) -> dict[str, Any]:
    """A YAML file holding one flat mapping whose keys must all be in ``known``; every failure is an
    ``error`` naming the file (and the unknown keys)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise error(f"{what} {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path}: expected a mapping of {item}: value, got {type(data).__name__}")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise error(f"{what} {path}: unknown keys {unknown}; {hint}")
    return data
