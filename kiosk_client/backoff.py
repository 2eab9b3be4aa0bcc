"""Exponential backoff with jitter, so a thousand kiosks do not all knock at once after an
outage (each waits a random time between half and all of the current step)."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base: float = 1.0, cap: float = 15.0, factor: float = 2.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.factor = factor
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        step = min(self.cap, self.base * self.factor**self.attempt)
        self.attempt += 1
        return step / 2 + self._rng.uniform(0, step / 2)

    def reset(self) -> None:
        self.attempt = 0
