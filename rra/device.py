"""Device choice shared by every stage: CUDA when present, CPU otherwise."""

from __future__ import annotations


def pick_device(preference: str = "auto"):
    """Return a ``torch.device``: ``auto`` = CUDA if available else CPU; ``cpu``; ``cuda[:N]``.

    Asking for CUDA on a machine without it is an error, not a silent fallback.
    """
    import torch

    pref = str(preference).lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref == "cpu":
        return torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {preference!r} requested but CUDA is not available")
        return torch.device(pref)
    raise ValueError(f"unknown device {preference!r}: use 'auto', 'cpu' or 'cuda[:N]'")
