"""Which torch device a run uses."""

from __future__ import annotations

from msutils.core.validation import check_choice

__all__ = ["DEVICES", "resolve_device"]

#: Accepted values of every ``device`` parameter.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """``"cuda"`` or ``"cpu"``: ``"auto"`` picks CUDA when torch sees a GPU."""
    check_choice("device", device, DEVICES)
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
