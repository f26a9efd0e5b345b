"""NaN/Inf checks that name their source (the same check as ``live2diff_core.finite.check_finite``: the two cores
are separate packages). StreamingT2V reads every chunk back to the host anyway, so its checks need no deferral."""
from __future__ import annotations

import torch
from torch import Tensor

INPUT_HINT = "fix the node or file that produced them"


def check_finite(x: Tensor, source: str, hint: str = INPUT_HINT) -> Tensor:
    """Raise ``ValueError`` naming ``source`` (and the frames, dim 0) if ``x`` holds NaN/Inf; returns ``x``."""
    bad = (~torch.isfinite(x.flatten(1) if x.dim() > 1 else x.reshape(1, -1)).all(dim=1)).cpu()
    if not bad.any():
        return x
    if bad.numel() == 1:
        raise ValueError(f"{source} contains NaN/Inf values; {hint}")
    raise ValueError(f"{source}: {int(bad.sum())} of {bad.numel()} frames contain NaN/Inf values (first: frame "
                     f"{int(bad.nonzero()[0, 0])}); {hint}")
