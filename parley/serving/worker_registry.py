"""Which workers serve which models, how busy they are, and which one gets the next request."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from parley.serving.protocol import WorkerStatus


class DispatchMethod(str, Enum):
    LOTTERY = "lottery"  # random, weighted by each worker's speed
    SHORTEST_QUEUE = "shortest_queue"  # the smallest queue_length / speed


@dataclass
class WorkerEntry:
    model_names: list[str]
    speed: float
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float
    multimodal: bool = False


class WorkerRegistry:
    def __init__(self, dispatch: DispatchMethod, expiration_s: float,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.dispatch = dispatch
        self.expiration_s = expiration_s
        self._clock = clock
        self._rng = rng or random.Random()
        self.workers: dict[str, WorkerEntry] = {}
        self.known_models: set[str] = set()  # every model ever registered, served now or not

    def register(self, name: str, status: WorkerStatus, check_heart_beat: bool = True, multimodal: bool = False) -> None:
        self.known_models.update(status.model_names)
        self.workers[name] = WorkerEntry(
            model_names=list(status.model_names), speed=status.speed if status.speed > 0 else 1.0,
            queue_length=status.queue_length, check_heart_beat=check_heart_beat,
            last_heart_beat=self._clock(), multimodal=multimodal,
        )

    def remove(self, name: str) -> bool:
        return self.workers.pop(name, None) is not None

    def heartbeat(self, name: str, queue_length: int) -> bool:
        """False tells the worker it is unknown here (so it registers again)."""
        entry = self.workers.get(name)
        if entry is None:
            return False
        entry.queue_length = queue_length
        entry.last_heart_beat = self._clock()
        return True

    def expire(self) -> list[str]:
        deadline = self._clock() - self.expiration_s
        gone = [n for n, w in self.workers.items() if w.check_heart_beat and w.last_heart_beat < deadline]
        for name in gone:
            del self.workers[name]
        return gone

    def models(self, multimodal: bool | None = None) -> list[str]:
        names = {m for w in self.workers.values() if multimodal is None or w.multimodal == multimodal for m in w.model_names}
        return sorted(names)

    def pick(self, model: str) -> str | None:
        """The worker for the next request to `model`, or None when no worker serves it."""
        candidates = [(n, w) for n, w in self.workers.items() if model in w.model_names]
        if not candidates:
            return None
        if self.dispatch is DispatchMethod.LOTTERY:
            name, _ = self._rng.choices(candidates, weights=[w.speed for _, w in candidates])[0]
            return name
        name, entry = min(candidates, key=lambda c: (c[1].queue_length / c[1].speed, self._rng.random()))
        entry.queue_length += 1  # until the next heartbeat, count what was just sent there
        return name

    def total_status(self) -> WorkerStatus:
        return WorkerStatus(
            model_names=self.models(),
            speed=sum(w.speed for w in self.workers.values()),
            queue_length=sum(w.queue_length for w in self.workers.values()),
        )
