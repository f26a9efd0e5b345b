"""StreamDiffusion-style pipelined denoising at the latent level.

One UNet batch holds every denoising step: row ``i`` is a frame at step ``i`` (the frame that entered ``i`` calls
ago). Each call adds the newest frame at the first step, finishes the oldest one at the last step and re-noises
the rest to their next timestep. With ``T`` steps the output lags the input by ``T-1`` frames: :meth:`step`
returns ``None`` for the first ``T-1`` streamed frames and :meth:`flush` drains them at the end, so ``N`` frames in
give ``N`` frames out (the 8 warm-up frames come back from :meth:`warmup`).

Randomness: every draw goes through :meth:`StreamEngine.noise` (a ``torch.Generator`` you pass), or you pass the
noise tensors explicitly.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from .finite import FiniteWatch
from .scheduler import DenoiserCoefficients, make_lcm_scheduler, select_timesteps
from .video_unet import VideoUNet

LATENT_HINT = "the input frames or depth maps, or the VAE encoder, produced them: check them, or try dtype float32"
OUTPUT_HINT = "the model or a LoRA produced non-finite values: try dtype float32, or check the LoRA"


class StreamEngine:
    """Warm-up + pipelined streaming of latents through a :class:`VideoUNet` with a KV cache.

    ``latent_height``/``latent_width`` are latent units (pixels / 8). ``t_index_list`` indexes the
    ``num_inference_steps`` LCM timesteps (or give ``strength``). ``text_embeds`` is ``[1, 77, D]``.
    ``acceleration``: ``"none"``, ``"cuda_graph"`` or ``"compile"`` for the streaming UNet call (see
    :mod:`live2diff_core.acceleration`).
    """

    def __init__(
        self,
        unet: VideoUNet,
        text_embeds: Tensor,
        latent_height: int,
        latent_width: int,
        *,
        t_index_list: Sequence[int] | None = None,
        strength: float | None = None,
        num_inference_steps: int = 50,
        window: int = 16,
        sinks: int = 8,
        generator: torch.Generator | None = None,
        scheduler=None,
        acceleration: str = "none",
    ) -> None:
        if t_index_list is None and strength is None:
            t_index_list = (30, 40)
        self.unet = unet
        self.scheduler = scheduler or make_lcm_scheduler()
        self.timesteps = select_timesteps(self.scheduler, num_inference_steps, t_index_list, strength)
        self.num_steps = len(self.timesteps)
        self.height, self.width = latent_height, latent_width
        self.dtype, self.device = unet.dtype, unet.device
        self.coef = DenoiserCoefficients.build(self.scheduler, self.timesteps, self.dtype, self.device)
        if text_embeds.dim() != 3 or text_embeds.shape[0] != 1:
            raise ValueError(f"text_embeds must be [1, 77, D], got {tuple(text_embeds.shape)}")
        self.text = text_embeds.to(self.device, self.dtype)
        self.generator = generator
        self.cache = unet.new_cache(self.num_steps, latent_height, latent_width, window=window, sinks=sinks)
        self.acceleration = acceleration
        self.runner = unet.stream_runner(self.cache, acceleration) if acceleration != "none" else None
        self.watch = FiniteWatch()  # NaN/Inf of the inputs and outputs; read one frame late on a GPU
        self._reset_buffers()

    # ------------------------------------------------------------------ state
    @property
    def sinks(self) -> int:
        return self.cache.sinks

    @property
    def is_warm(self) -> bool:
        return self.cache.is_warm

    @property
    def pending(self) -> int:
        """Frames inside the pipeline whose output has not been returned yet."""
        return sum(self.cache.occupied[:-1])

    def _reset_buffers(self) -> None:
        t, h, w = self.num_steps, self.height, self.width
        self._x_buf = torch.zeros(t - 1, 4, 1, h, w, dtype=self.dtype, device=self.device)
        self._d_buf = torch.zeros_like(self._x_buf)
        self._finished = False
        self._uses_depth: bool | None = None

    def reset(self) -> None:
        """Forget the stream (cache and in-flight frames); the next call must be :meth:`warmup`."""
        self.cache.reset()
        self._reset_buffers()
        self.watch.clear()

    def _state(self) -> tuple:
        """The stream besides the KV cache: in-flight latents, flags and the generator's state."""
        generator = None if self.generator is None else self.generator.get_state()
        return self._x_buf, self._d_buf, self._finished, self._uses_depth, generator

    def _restore(self, state: tuple) -> None:
        self._x_buf, self._d_buf, self._finished, self._uses_depth, generator = state
        if generator is not None:
            self.generator.set_state(generator)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run several :meth:`step` (or :meth:`flush`) calls atomically: if the block raises (an error, or an
        interrupt), the stream (KV cache contents and counters, in-flight latents, generator) is restored exactly as
        it was before the block. The deferred NaN/Inf flags of the block are read before it commits."""
        state = self._state()
        self.cache.begin()
        try:
            yield
            self.watch.check()
        except BaseException:
            self.watch.clear()
            self.cache.rollback()
            self._restore(state)
            raise
        else:
            self.cache.commit()

    def noise(self, shape: Sequence[int]) -> Tensor:
        """A standard-normal draw from the engine's generator (on the generator's device, then moved)."""
        gen_device = self.generator.device if self.generator is not None else "cpu"
        return torch.randn(tuple(shape), generator=self.generator, device=gen_device,
                           dtype=torch.float32).to(self.device, self.dtype)

    def _check_latents(self, x: Tensor, frames: int | None, what: str) -> Tensor:
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or tuple(x.shape[1:]) != (4, self.height, self.width):
            raise ValueError(f"{what} must be [N, 4, {self.height}, {self.width}], got {tuple(x.shape)}")
        if frames is not None and x.shape[0] != frames:
            raise ValueError(f"{what} needs exactly {frames} frames, got {x.shape[0]}")
        self.watch.watch(x, what, LATENT_HINT)
        return x.to(self.device, self.dtype)

    # ------------------------------------------------------------------ warm-up
    @torch.no_grad()
    def warmup(self, latents: Tensor, depth_latents: Tensor | None = None, *,
               noise: Tensor | None = None, check_interrupt: Callable[[], None] | None = None) -> Tensor:
        """Denoise the ``sinks`` warm-up frames together (bidirectional) through all steps; fill every cache row.

        ``latents``/``depth_latents``: ``[sinks, 4, h, w]`` clean (VAE-encoded) latents. ``noise``: optional
        ``[T, sinks, 4, h, w]`` (row 0 noises the input to the first timestep, row ``i`` re-noises to step ``i``).
        ``check_interrupt()`` runs before every denoising step; if it (or anything else) raises, the engine is left
        exactly as it was before the call (a running stream included). Returns the final x0 latents
        ``[sinks, 4, h, w]``.
        """
        n = self.sinks
        z = self._check_latents(latents, n, "warm-up latents")
        d = None if depth_latents is None else self._check_latents(depth_latents, n, "warm-up depth latents")
        if noise is not None and tuple(noise.shape) != (self.num_steps, n, 4, self.height, self.width):
            raise ValueError(f"warm-up noise must be [{self.num_steps}, {n}, 4, h, w], got {tuple(noise.shape)}")
        state = self._state()
        # a cache without warm rows holds nothing that is ever read: resetting it again restores it
        cache = self.cache.clone() if self.cache.calls or any(self.cache.warm) else None
        self.reset()
        try:
            self._uses_depth = d is not None
            to_clip = lambda a: a.transpose(0, 1)[None]  # [F,4,h,w] -> [1,4,F,h,w]
            eps_noise = lambda i: (noise[i].to(self.device, self.dtype) if noise is not None
                                   else self.noise((n, 4, self.height, self.width)))
            x_t = self.coef.add_noise(to_clip(z), to_clip(eps_noise(0)), 0)
            depth = None if d is None else to_clip(d)
            x0 = x_t
            for i in range(self.num_steps):
                if check_interrupt is not None:
                    check_interrupt()
                eps = self.unet.warmup(x_t, self.coef.timesteps[i:i + 1], self.text, depth, self.cache, row=i)
                x0 = self.coef.denoise(x_t, eps, i)
                if i + 1 < self.num_steps:
                    x_t = self.coef.add_noise(x0, to_clip(eps_noise(i + 1)), i + 1)
            self.watch.watch(x0[0].transpose(0, 1), "Live2Diff warm-up output", OUTPUT_HINT)
        except BaseException:
            if cache is None:
                self.cache.reset()
            else:
                self.cache.load(cache)
            self._restore(state)
            raise
        return x0[0].transpose(0, 1)

    # ------------------------------------------------------------------ streaming
    @torch.no_grad()
    def step(self, latent: Tensor, depth_latent: Tensor | None = None, *, noise: Tensor | None = None
             ) -> Tensor | None:
        """Feed one clean frame latent ``[1,4,h,w]``; returns the x0 of the frame that entered ``T-1`` calls ago
        (``[1,4,h,w]``), or ``None`` while the pipeline is filling. ``noise``: optional ``[T,4,h,w]`` (row 0 noises
        the new frame, rows ``1..`` re-noise the in-flight frames). NaN/Inf flags of earlier calls whose work has
        finished are read first (on a GPU the output of a call is checked one call late)."""
        self.watch.poll()
        if not self.cache.is_warm:
            raise RuntimeError("run warmup() with the first warm-up frames before streaming")
        if self._finished:
            raise RuntimeError("the stream was flushed; call warmup() to start a new one")
        z = self._check_latents(latent, 1, "frame latent")
        d = None if depth_latent is None else self._check_latents(depth_latent, 1, "frame depth latent")
        if self._uses_depth is None:
            self._uses_depth = d is not None
        elif self._uses_depth != (d is not None):
            raise ValueError("depth latents must be given for every frame of a stream, or for none")
        noise = self._check_noise(noise)
        x_new = self.coef.add_noise(z[:, :, None], noise[0:1, :, None], 0)
        return self._call(x_new, None if d is None else d[:, :, None], noise, head_active=True)

    @torch.no_grad()
    def flush(self, noise: Sequence[Tensor] | None = None, *,
              check_interrupt: Callable[[], None] | None = None) -> list[Tensor]:
        """Drain the frames still in the pipeline (``T-1`` of them once it is full); returns their x0 latents in
        order. ``noise``: optional ``[T,4,h,w]`` tensors, one per drain call (rows ``1..`` are used). The stream is
        finished afterwards. ``check_interrupt()`` runs before every drain call (wrap the call in
        :meth:`transaction` to undo a partial drain)."""
        out: list[Tensor] = []
        junk = torch.zeros(1, 4, 1, self.height, self.width, dtype=self.dtype, device=self.device)
        supplied = list(noise) if noise is not None else None
        while self.pending:
            if check_interrupt is not None:
                check_interrupt()
            n = self._check_noise(supplied.pop(0) if supplied else None)
            res = self._call(junk, junk if self._uses_depth else None, n, head_active=False)
            if res is not None:
                out.append(res)
        self._finished = True
        self.watch.check()
        return out

    def _check_noise(self, noise: Tensor | None) -> Tensor:
        shape = (self.num_steps, 4, self.height, self.width)
        if noise is None:
            return self.noise(shape)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must be {list(shape)}, got {tuple(noise.shape)}")
        return noise.to(self.device, self.dtype)

    def _call(self, x_new: Tensor, d_new: Tensor | None, noise: Tensor, head_active: bool) -> Tensor | None:
        t = self.num_steps
        x = torch.cat([x_new, self._x_buf]) if t > 1 else x_new
        depth = None
        if d_new is not None:
            depth = torch.cat([d_new, self._d_buf]) if t > 1 else d_new
        if self.runner is not None and self.runner.owner is not self.unet:  # the model was swapped (reloaded)
            self.runner = self.unet.stream_runner(self.cache, self.acceleration)
        eps = self.unet.stream(x, self.coef.timesteps, self.text.expand(t, -1, -1), depth, self.cache,
                               head_active=head_active, runner=self.runner)
        x0 = self.coef.denoise(x, eps, slice(None))
        if t > 1:
            self._x_buf = self.coef.add_noise(x0[:-1], noise[1:, :, None], slice(1, None))
            if depth is not None:
                self._d_buf = depth[:-1]
        if self.cache.occupied[-1]:  # the last row held a real frame: it is finished
            out = x0[-1:, :, 0]
            index = self.sinks + self.cache.calls - t  # warm-up frames are 0..sinks-1
            self.watch.watch(out, f"Live2Diff output frame {index}", OUTPUT_HINT)
            return out
        return None
