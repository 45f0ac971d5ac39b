"""Where a run's engine replicas and learner ranks run (``cluster:`` in a config file).

Pure: importing this module imports no Ray (configs are parsed before anything starts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: ``cluster.address`` values besides a ``host:port`` or ``ray://host:port`` address.
ADDRESS_KEYWORDS = ("local", "auto")
_HOST_PORT = re.compile(r"(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}")


@dataclass
class ClusterConfig:
    """The Ray cluster behind engine replicas and learner ranks.

    Attributes:
        address: ``None`` (default): no Ray while ``engine.replicas`` and
            ``learner.world_size`` are both 1 (the plain one-process run); with more, a
            local Ray instance that the run starts and stops (as ``"local"``).
            ``"local"``: always start a local Ray instance for the run (stopped at its end).
            ``"auto"``: join the cluster started on this machine with ``ray start --head``
            (or named by ``RAY_ADDRESS``). ``"host:port"`` / ``"ray://host:port"``: join
            that cluster's head. A joined cluster is left running at the end; the run's own
            actors are stopped.
        num_cpus: CPUs a local Ray instance offers (``None`` = all of this machine's).
            Ignored when joining a cluster.
        object_store_gib: Size of a local instance's object store in GiB, where pushed
            weights travel (``None`` = Ray's default, 30% of memory). Ignored when joining.
        connect_timeout_s: Give up reaching ``address`` after this many seconds, in one line.
    """

    address: str | None = None
    num_cpus: int | None = None
    object_store_gib: float | None = None
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        address = self.address
        if address is not None and (
            not isinstance(address, str)
            or (address not in ADDRESS_KEYWORDS and not _HOST_PORT.fullmatch(address))
        ):
            raise ValueError(
                "ClusterConfig.address must be null, 'local', 'auto', 'host:port' or "
                f"'ray://host:port', got {address!r}"
            )
        if self.num_cpus is not None and (
            not isinstance(self.num_cpus, int)
            or isinstance(self.num_cpus, bool)
            or self.num_cpus < 1
        ):
            raise ValueError(f"ClusterConfig.num_cpus must be >= 1 or null, got {self.num_cpus!r}")
        if self.object_store_gib is not None and not self.object_store_gib > 0:
            raise ValueError(
                f"ClusterConfig.object_store_gib must be > 0 or null, got {self.object_store_gib!r}"
            )
        if not self.connect_timeout_s > 0:
            raise ValueError(
                f"ClusterConfig.connect_timeout_s must be > 0, got {self.connect_timeout_s!r}"
            )

    def uses_ray(self, replicas: int = 1, world_size: int = 1) -> bool:
        """Whether a run with this many engine replicas and learner ranks runs on Ray."""
        return self.address is not None or replicas > 1 or world_size > 1

    @property
    def joins(self) -> bool:
        """Whether the run joins an existing cluster (instead of starting its own)."""
        return self.address not in (None, "local")
