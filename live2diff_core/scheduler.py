"""The LCM scheduler Live2Diff uses, and the per-row coefficients of its one-step denoiser.

Live2Diff builds ``LCMScheduler`` from the *linear*-beta DDPM config of AnimateDiff (beta 0.00085..0.012,
``beta_schedule="linear"``), not SD's ``scaled_linear``: the motion modules were trained with it. Do not "fix" it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from diffusers import LCMScheduler
from torch import Tensor

SCHEDULER_CONFIG = Path(__file__).parent / "configs" / "sd15" / "scheduler" / "scheduler_config.json"
#: Longest LCM schedule of the shipped config: LCM picks its timesteps from the ``original_inference_steps``
#: (50) steps it was distilled on, so more steps than that do not exist.
MAX_INFERENCE_STEPS: int = json.loads(SCHEDULER_CONFIG.read_text())["original_inference_steps"]


def make_lcm_scheduler(config: dict | None = None) -> LCMScheduler:
    """An ``LCMScheduler`` from the shipped linear-beta config (or ``config``)."""
    if config is None:
        config = json.loads(SCHEDULER_CONFIG.read_text())
    return LCMScheduler.from_config(config)


def select_timesteps(
    scheduler: LCMScheduler,
    num_inference_steps: int = 50,
    t_index_list: Sequence[int] | None = None,
    strength: float | None = None,
) -> list[int]:
    """The denoising timesteps, largest first.

    ``t_index_list`` indexes the ``num_inference_steps`` LCM timesteps (50 steps: 999, 979, ..., 19); with
    ``strength`` instead, the last ``int(num_inference_steps * strength)`` timesteps are used (img2img style).
    Exactly one of the two must be given.
    """
    if (t_index_list is None) == (strength is None):
        raise ValueError("give exactly one of t_index_list and strength")
    limit = scheduler.config.original_inference_steps
    if not 1 <= num_inference_steps <= limit:
        raise ValueError(f"steps (num_inference_steps) must be in 1..{limit}: the LCM schedule picks its timesteps "
                         f"from the {limit} steps it was distilled on; got {num_inference_steps}")
    scheduler.set_timesteps(num_inference_steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    if strength is not None:
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        init = min(int(num_inference_steps * strength), num_inference_steps)
        chosen = timesteps[max(num_inference_steps - init, 0):]
        if not chosen:
            raise ValueError(f"strength {strength} with {num_inference_steps} steps selects no timestep")
        return chosen
    indices = list(t_index_list)
    if not indices:
        raise ValueError("t_index_list is empty")
    bad = [i for i in indices if not 0 <= i < len(timesteps)]
    if bad:
        raise ValueError(f"t_index_list entries {bad} are outside 0..{len(timesteps) - 1}")
    chosen = [timesteps[i] for i in indices]
    if any(a <= b for a, b in zip(chosen, chosen[1:])):
        raise ValueError(f"t_index_list must select strictly decreasing timesteps, got {chosen}")
    return chosen


@dataclass(frozen=True)
class DenoiserCoefficients:
    """Per-row coefficients ``[T,1,1,1,1]`` for ``T`` denoising steps."""

    timesteps: Tensor
    alpha_sqrt: Tensor
    sigma_sqrt: Tensor
    c_skip: Tensor
    c_out: Tensor

    @classmethod
    def build(cls, scheduler: LCMScheduler, timesteps: Sequence[int], dtype: torch.dtype,
              device: torch.device | str) -> "DenoiserCoefficients":
        acp = scheduler.alphas_cumprod
        shape = (len(timesteps), 1, 1, 1, 1)

        def col(values: list[Tensor]) -> Tensor:
            return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values]).view(shape).to(
                device=device, dtype=dtype)

        # int64 tensor timesteps, as the official pipeline passes them: the scalings are then computed in float32
        scalings = [scheduler.get_scalings_for_boundary_condition_discrete(torch.tensor(t)) for t in timesteps]
        return cls(
            timesteps=torch.tensor(list(timesteps), dtype=torch.long, device=device),
            alpha_sqrt=col([acp[t].sqrt() for t in timesteps]),
            sigma_sqrt=col([(1 - acp[t]).sqrt() for t in timesteps]),
            c_skip=col([s[0] for s in scalings]),
            c_out=col([s[1] for s in scalings]),
        )

    def add_noise(self, x0: Tensor, noise: Tensor, rows: slice | int) -> Tensor:
        """``sqrt(abar) x0 + sqrt(1-abar) noise`` with the coefficients of ``rows``."""
        return self.alpha_sqrt[rows] * x0 + self.sigma_sqrt[rows] * noise

    def denoise(self, x_t: Tensor, eps: Tensor, rows: slice | int) -> Tensor:
        """LCM boundary-condition step: ``x0 = c_out * (x_t - sqrt(1-abar) eps) / sqrt(abar) + c_skip * x_t``."""
        f_theta = (x_t - self.sigma_sqrt[rows] * eps) / self.alpha_sqrt[rows]
        return self.c_out[rows] * f_theta + self.c_skip[rows] * x_t
