"""The engine's on-disk cache: where built artifacts live, and how they are written.

Both the demo model and converted model aliases are built once and reused. A build is written to a
temporary directory beside its final place and renamed into place only when complete, so a build
killed half-way never leaves a cache entry that looks finished.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def default_cache_dir() -> Path:
    """``$TTRL_CACHE`` if set, else ``~/.cache/ttrl-engine``."""
    return Path(os.environ.get("TTRL_CACHE") or Path.home() / ".cache" / "ttrl-engine")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``final`` in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private to its creator
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
