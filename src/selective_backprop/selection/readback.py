"""Reading small device counters on the host without stalling the device queue."""

from __future__ import annotations

from collections import deque

import torch


class LaggedReader:
    """Host view of a small device tensor (a counter, τ), `lag` submissions behind on CUDA.

    On CUDA each `submit` starts a non-blocking copy into pinned memory and records an event; the
    value becomes visible once `lag` newer submissions exist (by then the copy has long finished,
    so waiting on its event costs nothing). On CPU there is no device to wait for: lag is 0.
    """

    def __init__(self, device: torch.device, lag: int | None = None):
        self.lag = (1 if device.type == "cuda" else 0) if lag is None else lag
        self._queue: deque = deque()
        self.value = 0

    def submit(self, counter: torch.Tensor) -> None:
        """Queue a snapshot of the 0-d int counter."""
        if counter.device.type == "cuda":
            host = torch.empty((), dtype=counter.dtype, pin_memory=True)
            host.copy_(counter, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._queue.append((host, event))
        else:
            self._queue.append((counter.clone(), None))
        while len(self._queue) > self.lag:
            self._pop()

    def _pop(self) -> None:
        host, event = self._queue.popleft()
        if event is not None:
            event.synchronize()
        self.value = host.item()

    def drain(self) -> int:
        """Wait for every queued snapshot (one sync; for epoch ends and checkpoints)."""
        while self._queue:
            self._pop()
        return self.value

    def reset(self, value: int = 0) -> None:
        self._queue.clear()
        self.value = value
