"""Which torch device a run uses, and how many CPU threads torch may take."""

from __future__ import annotations

import contextlib
from typing import Iterator

from msutils.core.validation import check_choice, check_int

__all__ = ["DEVICES", "resolve_device", "torch_threads"]

#: Accepted values of every ``device`` parameter.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """``"cuda"`` or ``"cpu"``: ``"auto"`` picks CUDA when torch sees a GPU."""
    check_choice("device", device, DEVICES)
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Inside the block torch uses ``num_threads`` CPU threads (None: unchanged); restored after.

    Two fold processes on a 2-core machine each using torch's default (all cores)
    oversubscribe the CPU; the profiles set one thread per fold process.
    """
    check_int("num_threads", num_threads, 1, optional=True)
    import torch

    old = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)
