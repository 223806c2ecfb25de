"""The queue on its own: which download starts next, room for it, and idleness."""

from __future__ import annotations

from pathlib import Path

from modelhaul.config import ManagerConfig, MiB
from modelhaul.events import State
from modelhaul.manager.limits import TaskBucket
from modelhaul.manager.queue import TaskQueue
from modelhaul.manager.tasks import Task, new_future
from modelhaul.policy.paths import TargetPaths


def make_task(seq: int, *, priority: int = 0, size: int | None = None) -> Task:
    path = Path(f"/nowhere/f{seq}.bin")
    paths = TargetPaths(dest=path, part=path.with_suffix(".part"), journal=path, name_pending=False)
    return Task(
        id=f"d{seq + 1}",
        url=f"http://origin/f{seq}.bin",
        paths=paths,
        dest=path,
        directory=None,
        sha256=None,
        expected_size=size,
        headers={},
        priority=priority,
        seq=seq,
        rate_limit=None,
        limiter=TaskBucket(None),
        future=new_future(),
        size=size,
    )


def enqueue(queue: TaskQueue, task: Task) -> None:
    task.state = State.QUEUED
    queue.index(task)


def start_all(queue: TaskQueue) -> list[str]:
    started = []
    while (task := queue.next_nowait()) is not None:
        task.state = State.RUNNING
        task.started_once = True
        queue.index(task)
        started.append(task.id)
    return started


async def test_priority_first_then_started_files_then_first_come() -> None:
    queue = TaskQueue(ManagerConfig(adaptive=False, max_active_files=10))
    new, low, high, resumed = (make_task(i) for i in range(4))
    low.priority = -1
    high.priority = 5
    resumed.started_once = True  # paused once: finishing it beats starting a new file
    for task in (new, low, high, resumed):
        enqueue(queue, task)
    assert start_all(queue) == [high.id, resumed.id, new.id, low.id]


async def test_a_new_priority_replaces_the_old_place_in_the_queue() -> None:
    queue = TaskQueue(ManagerConfig(adaptive=False, max_active_files=10))
    first, second = make_task(0), make_task(1)
    enqueue(queue, first)
    enqueue(queue, second)
    second.priority = 1
    queue.push(second)
    assert start_all(queue) == [second.id, first.id]


async def test_no_start_without_a_slot_and_small_files_run_beside_large_ones() -> None:
    queue = TaskQueue(ManagerConfig(max_active_files=1, max_small_files=3))
    large, small, later = make_task(0, size=100 * MiB), make_task(1, size=MiB), make_task(2)
    queue.presume_small = False  # the size of `later` is unknown: presumed large
    for task in (large, small, later):
        enqueue(queue, task)
    assert start_all(queue) == [large.id, small.id]
    assert queue.queued == {later}  # waits for the large file's slot


async def test_idleness_is_reported_once_when_it_begins() -> None:
    queue = TaskQueue(ManagerConfig())
    task = make_task(0)
    enqueue(queue, task)
    assert not queue.became_idle()
    task.state = State.COMPLETED
    queue.index(task)
    assert queue.idle()
    assert queue.became_idle()
    assert not queue.became_idle()
    await queue.wait_idle()
