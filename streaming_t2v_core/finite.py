"""NaN/Inf checks that name their source (the same check as ``live2diff_core.finite.check_finite``: the two cores
are separate packages). StreamingT2V reads every chunk back to the host anyway, so its checks need no deferral."""
from __future__ import annotations

import torch
from torch import Tensor

INPUT_HINT = "fix the node or file that produced them"


def check_finite(x: Tensor, source: str, hint: str = INPUT_HINT, *, first_frame: int | None = None) -> Tensor:
    """Raise ``ValueError`` naming ``source`` (and the frames, dim 0) if ``x`` holds NaN/Inf; returns ``x``.
    ``first_frame``: ``x`` is the slice of a longer video that starts at that frame (read slice by slice); the
    message then names the slice and the frame's index in the whole video."""
    bad = (~torch.isfinite(x.flatten(1) if x.dim() > 1 else x.reshape(1, -1)).all(dim=1)).cpu()
    if not bad.any():
        return x
    count, first = int(bad.sum()), int(bad.nonzero()[0, 0])
    if first_frame is not None:
        raise ValueError(f"{source} {first_frame}..{first_frame + bad.numel() - 1}: {count} of {bad.numel()} frames "
                         f"contain NaN/Inf values (first: frame {first_frame + first}); {hint}")
    if bad.numel() == 1:
        raise ValueError(f"{source} contains NaN/Inf values; {hint}")
    raise ValueError(f"{source}: {count} of {bad.numel()} frames contain NaN/Inf values (first: frame {first}); "
                     f"{hint}")
