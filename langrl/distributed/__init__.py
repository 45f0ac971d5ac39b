"""Past one process: engine replicas and learner ranks as Ray actors.

- ``ClusterConfig`` (``cluster:`` in a config file): no Ray, a local instance, or a cluster
  to join.
- ``langrl.distributed.cluster``: starting or joining Ray, resource checks, one-line errors.
- ``langrl.distributed.replicated_engine.ReplicatedEngine``: a ``PolicyEngine`` over N engine
  replicas (``engine.replicas``), each a Ray actor holding an ordinary engine.
- ``langrl.distributed.learner_group.LearnerGroup``: the learner as ``learner.world_size``
  data-parallel ranks.

Importing this package imports no Ray; the modules that need it import it when used.
"""

from langrl.distributed.config import ClusterConfig

__all__ = ["ClusterConfig"]
