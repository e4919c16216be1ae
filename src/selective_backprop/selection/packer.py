"""Packs kept examples into training batches of exactly `batch_size` rows, on the device."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from selective_backprop.selection.readback import LaggedReader
from selective_backprop.selection.rules import kept_first_order


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last for 4-d tensors laid out that way (so packed batches keep it), else contiguous."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _rows(buf: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """buf[idx] along dim 0, in buf's memory format (index_select would return contiguous rows)."""
    return buf[idx] if _memory_format(buf) == torch.channels_last else buf.index_select(0, idx)


class BatchPacker:
    """FIFO of kept examples in a device ring buffer; emits full batches, carries the remainder.

    `add(tensors, mask)` appends the rows of `tensors` (all sharing dim 0) where `mask` is True,
    in order, without a host sync: kept rows are sorted first and written at the device-side tail.
    `pop_ready()` yields every full batch the host knows about (on CUDA the kept count is read one
    `add` late, see LaggedReader). Every kept row is emitted exactly once, in arrival order.
    """

    def __init__(self, batch_size: int, lag: int | None = None):
        self.batch_size = batch_size
        self._lag = lag
        self._reset()

    def _reset(self) -> None:
        self._buffers: list[torch.Tensor] | None = None
        self._capacity = 0
        self._appended: torch.Tensor | None = None   # device: rows ever appended
        self._emitted = 0                            # host: rows ever emitted
        self._reader: LaggedReader | None = None

    # -- internals -----------------------------------------------------------------------------
    def _allocate(self, tensors: Sequence[torch.Tensor], rows: int) -> None:
        device = tensors[0].device
        self._reader = LaggedReader(device, self._lag)
        self._capacity = self.batch_size + (self._reader.lag + 2) * rows
        self._buffers = [torch.empty((self._capacity, *t.shape[1:]), dtype=t.dtype, device=device,
                                     memory_format=_memory_format(t)) for t in tensors]
        self._appended = torch.zeros((), dtype=torch.int64, device=device)

    def _grow(self, rows: int) -> None:
        """Make room for `rows` more rows than the current worst case (host-side sizes only)."""
        need = self.batch_size + (self._reader.lag + 2) * rows
        if need <= self._capacity:
            return
        live = self.drain_count()
        old = self.peek_pending(live)
        self._capacity = need + live
        self._buffers = [torch.empty((self._capacity, *b.shape[1:]), dtype=b.dtype, device=b.device,
                                     memory_format=_memory_format(b)) for b in self._buffers]
        self._emitted = 0
        self._appended.zero_()
        self._reader.reset(0)
        if live:
            self._write(old, torch.ones(live, dtype=torch.bool, device=old[0].device))

    # -- public API ------------------------------------------------------------------------------
    def add(self, tensors: Sequence[torch.Tensor], mask: torch.Tensor) -> None:
        """Append the masked rows of `tensors` (same length as mask) to the queue."""
        rows = mask.shape[0]
        if rows == 0:
            return
        if self._buffers is not None and self._buffers[0].device != tensors[0].device:
            self._relocate(tensors[0].device)
        if self._buffers is None:
            self._allocate(tensors, rows)
        elif len(tensors) != len(self._buffers):
            raise ValueError(f"packer got {len(tensors)} tensors per row, expected {len(self._buffers)}")
        else:
            self._grow(rows)
        self._write(tensors, mask)

    def _relocate(self, device: torch.device) -> None:
        """Move the queue to another device (e.g. state restored on CPU, training on CUDA)."""
        pending = [t.to(device) for t in self.peek_pending()]
        self._reset()
        if pending[0].shape[0]:
            self._allocate(pending, pending[0].shape[0])
            self._write(pending, torch.ones(pending[0].shape[0], dtype=torch.bool, device=device))

    def _write(self, tensors: Sequence[torch.Tensor], mask: torch.Tensor) -> None:
        if mask.device.type == "cpu" and self._reader.lag == 0:     # (a lagged CPU packer stands in for CUDA)
            self._write_kept(tensors, mask)
            return
        rows = mask.shape[0]
        # row order[i] goes to slot appended + i (kept rows first, in order): scatter each row straight
        # to its slot through the inverse permutation instead of gathering t[order] first
        order = kept_first_order(mask)
        arange = torch.arange(rows, device=mask.device)
        rank = torch.empty_like(order).scatter_(0, order, arange)
        positions = (self._appended + rank) % self._capacity
        for buf, t in zip(self._buffers, tensors):
            buf.index_copy_(0, positions, t.to(buf.dtype))
        self._appended += mask.sum()
        self._reader.submit(self._appended)

    def _write_kept(self, tensors: Sequence[torch.Tensor], mask: torch.Tensor) -> None:
        """On the CPU the kept count costs no wait: copy only the kept rows, into consecutive slots.

        The slots the device path fills with the unkept rows lie past the queue's end and are never
        read, so the queue's contents are the same.
        """
        keep = mask.nonzero().squeeze(1)
        kept = keep.shape[0]
        start = int(self._appended) % self._capacity
        first = min(kept, self._capacity - start)
        for buf, t in zip(self._buffers, tensors):
            rows = t.index_select(0, keep).to(buf.dtype)
            buf[start:start + first] = rows[:first]
            buf[:kept - first] = rows[first:]
        self._appended += kept
        self._reader.submit(self._appended)

    def _read(self, count: int, rows: int) -> list[torch.Tensor]:
        """Copies of `rows` queued rows starting at row number `count` (one slice when they do not wrap)."""
        start = count % self._capacity
        if start + rows <= self._capacity:
            return [buf[start:start + rows].clone() for buf in self._buffers]
        idx = (count + torch.arange(rows, device=self._buffers[0].device)) % self._capacity
        return [_rows(buf, idx) for buf in self._buffers]

    def pop_ready(self) -> Iterator[list[torch.Tensor]]:
        """Yield full batches of exactly batch_size rows that the host knows are queued."""
        if self._reader is None:
            return
        while self._reader.value - self._emitted >= self.batch_size:
            yield self._take(self.batch_size)

    def ready_batches(self) -> int:
        """How many full batches pop_ready() would yield now (host count, no sync), none taken."""
        if self._reader is None:
            return 0
        return (self._reader.value - self._emitted) // self.batch_size

    def drain_count(self) -> int:
        """Number of queued rows (waits for pending device counts)."""
        if self._reader is None:
            return 0
        return self._reader.drain() - self._emitted

    def _take(self, rows: int) -> list[torch.Tensor]:
        out = self._read(self._emitted, rows)
        self._emitted += rows
        return out

    def peek_pending(self, rows: int | None = None) -> list[torch.Tensor]:
        """Copies of the queued rows, without removing them."""
        rows = self.drain_count() if rows is None else rows
        return self._read(self._emitted, rows)

    def drain_ready(self) -> Iterator[list[torch.Tensor]]:
        """Bring the host count up to date (one sync) and yield every full batch queued."""
        self.drain_count()
        yield from self.pop_ready()

    def flush(self) -> list[torch.Tensor] | None:
        """Remove and return the queued remainder (fewer than batch_size rows), or None.

        Full batches still queued (possible when the count is read late, on CUDA) must be taken
        with drain_ready() first; flushing them would silently hand out an oversized batch.
        """
        rows = self.drain_count()
        if rows >= self.batch_size:
            raise RuntimeError(f"{rows} rows queued: take the full batches with drain_ready() before flush()")
        if rows == 0:
            return None
        return self._take(rows)

    def state_dict(self) -> dict:
        """The pending rows (a partial batch) as plain tensors."""
        if self._buffers is None:
            return {"pending": None}
        return {"pending": [t.cpu() for t in self.peek_pending()]}

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        self._reset()
        pending = state.get("pending")
        if pending and pending[0].shape[0] > 0:
            tensors = [t.to(device) if device is not None else t for t in pending]
            self.add(tensors, torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device))
