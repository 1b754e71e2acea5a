"""Joining a Ray cluster: the one step ``ttrl suite --ray``, ``ttrl submit`` and the rollout pool share.

Ray does the work (``ray.init``); this module turns "cannot connect" into a ``ClusterError`` that says
how to start a cluster, the one line ``ttrl`` prints instead of Ray's traceback.
"""

from __future__ import annotations

from engine.errors import ConfigError


class ClusterError(ConfigError):
    """The cluster cannot be reached, or cannot hold what a job asks for."""


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address``; None (or "") lets Ray choose: ``RAY_ADDRESS``, else the last
    ``ray start`` on this machine, else a new local cluster. A no-op when this process is connected."""
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address or None, log_to_driver=True)
    except (ConnectionError, RuntimeError) as err:
        raise ClusterError(f"cannot connect to the Ray cluster at {address or 'the default address'}: {err}. "
                           "Start one with `ray start --head`, or pass --ray with no address for a local one") from None
