"""TrajectoryBuffer: expiring-then-freshest batches, capacity, staleness bound, thread-safe
hand-off."""

from __future__ import annotations

import threading

import pytest

from langrl.buffer import TrajectoryBuffer
from langrl.trajectory import Trajectory


def traj(version: int = 0, reward: float = 0.0) -> Trajectory:
    return Trajectory([1], [2, 3], [-0.1, -0.2], reward, policy_version=version)


def test_get_returns_oldest_first_within_a_version():
    buf = TrajectoryBuffer(capacity=10)
    buf.put(traj(reward=r) for r in range(5))
    assert len(buf) == 5
    assert [t.reward for t in buf.get(3, current_version=0)] == [0, 1, 2]
    assert buf.get(3, current_version=0) is None  # only 2 left, no wait
    assert len(buf) == 2


def test_capacity_drops_oldest_and_counts():
    buf = TrajectoryBuffer(capacity=3)
    buf.put(traj(reward=r) for r in range(5))
    assert [t.reward for t in buf.get(3, 0)] == [2, 3, 4]
    assert buf.stats()["dropped_overflow"] == 2


def test_stale_trajectories_are_dropped_and_counted():
    buf = TrajectoryBuffer(capacity=10, max_staleness=1)
    buf.put([traj(0), traj(1), traj(1), traj(2)])
    batch = buf.get(1, current_version=2)
    assert [t.policy_version for t in batch] == [1]  # at the bound: before the fresh one
    assert buf.dropped_stale == 1  # version 0
    assert buf.ready(2, current_version=2)  # the other version-1 one, still within the bound
    assert buf.ready(1, current_version=3) and buf.dropped_stale == 2
    assert not buf.ready(2, current_version=3)


def test_what_expires_at_the_next_push_goes_first_so_nothing_trainable_is_dropped():
    # A rollout that yielded more than a batch leaves a surplus; freshest-first took the new
    # version's trajectories and let the surplus expire (10 of 50 dropped here).
    buf = TrajectoryBuffer(capacity=100, max_staleness=1)
    buf.put(traj(2, reward=i) for i in range(10))
    buf.put(traj(3, reward=10 + i) for i in range(40))
    batch = buf.get(32, current_version=3)
    assert [t.policy_version for t in batch] == [2] * 10 + [3] * 22
    assert [t.reward for t in batch[:10]] == list(range(10))  # arrival order kept
    assert buf.get(18, current_version=4) is not None
    assert buf.dropped_stale == 0 and len(buf) == 0


def test_expiring_up_to_takes_every_expiring_one_before_a_push_but_no_more():
    buf = TrajectoryBuffer(capacity=100, max_staleness=1)
    buf.put(traj(2, reward=i) for i in range(40))  # a surplus at the bound
    buf.put(traj(3) for _ in range(8))
    # Without it, 8 of the 40 would be dropped at the next version.
    batch = buf.get(32, current_version=3, expiring_up_to=64)
    assert len(batch) == 40 and [t.reward for t in batch] == list(range(40))
    assert len(buf) == 8 and buf.get(8, current_version=4) is not None
    assert buf.dropped_stale == 0
    # The cap holds, and what it leaves expires as before (counted).
    buf.put(traj(5) for _ in range(50))
    assert len(buf.get(16, current_version=6, expiring_up_to=20)) == 20
    buf.put(traj(6) for _ in range(20))
    assert len(buf.get(16, current_version=7, expiring_up_to=32)) == 20
    assert buf.dropped_stale == 30
    # Fewer expiring than a batch: the batch stays at batch_size.
    buf.put([traj(7) for _ in range(6)] + [traj(6)])
    assert len(buf.get(4, current_version=7, expiring_up_to=8)) == 4 and len(buf) == 3
    with pytest.raises(ValueError, match="expiring_up_to"):
        buf.get(4, current_version=7, expiring_up_to=3)


def test_beyond_the_expiring_ones_the_freshest_go_first():
    buf = TrajectoryBuffer(capacity=10, max_staleness=2)
    buf.put([traj(4, reward=0), traj(3, reward=1), traj(5, reward=2), traj(4, reward=3)])
    assert [t.reward for t in buf.get(4, current_version=5)] == [1, 2, 0, 3]


def test_get_hands_out_the_freshest_first_then_by_arrival():
    buf = TrajectoryBuffer(capacity=10)
    buf.put([traj(0, reward=0), traj(1, reward=1), traj(0, reward=2), traj(2, reward=3),
             traj(1, reward=4)])  # fmt: skip
    assert [t.reward for t in buf.get(3, current_version=2)] == [3, 1, 4]
    assert [t.reward for t in buf.get(2, current_version=2)] == [0, 2]
    assert len(buf) == 0


def test_count_by_version():
    buf = TrajectoryBuffer(capacity=10)
    buf.put([traj(0), traj(1), traj(2), traj(2)])
    assert buf.count() == 4
    assert buf.count(min_version=2) == 2
    assert buf.count(min_version=1) == 3
    assert buf.count(min_version=3) == 0


def test_no_staleness_bound_keeps_everything():
    buf = TrajectoryBuffer(capacity=10, max_staleness=None)
    buf.put([traj(0)])
    assert buf.get(1, current_version=100) is not None


def test_get_waits_for_a_producer_thread():
    buf = TrajectoryBuffer(capacity=10)
    # The producer puts only once the consumer waits (an event, not a sleep): get() is
    # then really woken by put().
    waiting = threading.Event()
    wait = buf._cond.wait

    def signalling_wait(timeout=None):
        waiting.set()
        return wait(timeout)

    buf._cond.wait = signalling_wait

    def produce():
        assert waiting.wait(60)
        buf.put([traj(), traj()])  # takes the lock, which the consumer's wait releases

    producer = threading.Thread(target=produce)
    producer.start()
    batch = buf.get(2, current_version=0, timeout=60.0)  # a hang guard, not a measurement
    producer.join()
    assert batch is not None and len(batch) == 2
    assert buf.get(1, current_version=0, timeout=0.01) is None


@pytest.mark.parametrize("kwargs", [{"capacity": 0}, {"max_staleness": -1}, {"capacity": 2.5}])
def test_bad_arguments_name_the_field(kwargs):
    with pytest.raises(ValueError, match=f"TrajectoryBuffer.{next(iter(kwargs))}"):
        TrajectoryBuffer(**kwargs)


def _value_only(version: int = 0, reward: float = 0.0) -> Trajectory:
    return Trajectory([1], [2], [-0.1], reward, policy_version=version, value_only=True)


def test_value_only_trajectories_ride_along_without_counting_towards_a_batch():
    buf = TrajectoryBuffer(capacity=2, max_staleness=1)
    buf.put([_value_only(0, 10.0), traj(1, 1.0), _value_only(1, 11.0), _value_only(1, 12.0)])
    assert len(buf) == 1 and buf.count() == 1 and not buf.ready(2, current_version=1)
    assert buf.stats()["value_only"] == 2  # its own capacity: 10.0 was dropped for 12.0
    assert buf.stats()["dropped_overflow"] == 1
    assert buf.get(2, current_version=1) is None  # value-only ones never fill a batch
    buf.put([traj(1, 2.0)])
    batch = buf.get(2, current_version=1)
    assert [(t.reward, t.value_only) for t in batch] == [
        (1.0, False), (2.0, False), (11.0, True), (12.0, True),
    ]  # fmt: skip
    assert buf.stats()["value_only"] == 0  # each is handed out once
    buf.put([_value_only(0), traj(2), traj(2)])
    assert [t.value_only for t in buf.get(2, current_version=2)] == [False, False]  # stale


def test_value_only_trajectories_survive_a_checkpoint():
    buf = TrajectoryBuffer(capacity=8)
    buf.put([traj(3, 1.0), _value_only(2, -1.0)])
    restored = TrajectoryBuffer(capacity=8)
    restored.load_state_dict(buf.state_dict(current_version=3), current_version=7)
    assert len(restored) == 1 and restored.stats()["value_only"] == 1
    batch = restored.get(1, current_version=7)
    assert [(t.reward, t.value_only, t.policy_version) for t in batch] == [
        (1.0, False, 7), (-1.0, True, 6),
    ]  # fmt: skip
