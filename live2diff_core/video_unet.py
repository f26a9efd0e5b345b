"""The Live2Diff video UNet: a diffusers SD1.5 ``UNet2DConditionModel`` inflated with motion modules.

Spatial layers run per frame (frames flattened into the batch, so GroupNorms are per frame as in the official
"inflated" model); a motion module follows every spatial layer of the down (2 per block) and up (3 per block)
blocks, none in the mid block. A depth MappingNetwork (``flow_conv_in``) adds its output to ``conv_in``'s.

Parameter names are the union of the diffusers UNet names and the official ``live2diff.ckpt`` names, so both load
1:1 into :meth:`VideoUNet.state_dict`.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable

import torch
from diffusers import UNet2DConditionModel
from torch import Tensor, nn

from .attention_plan import AttentionPlan, bidirectional_plan, training_plan
from .kv_cache import KVCache, LayerGeometry
from .acceleration import CapturedCall
from .fused_attention import install_fused_self_attention, refresh_fused
from .mapping_network import MappingNetwork
from .motion_module import MotionModule, MotionModuleConfig, TemporalContext, TemporalSelfAttention

_SPATIAL_PARTS = ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block", "up_blocks",
                  "conv_norm_out", "conv_act", "conv_out")


class VideoUNet(nn.Module):
    """SD1.5 video UNet with uni-directional temporal attention, a multi-timestep KV cache and a depth prior."""

    def __init__(self, unet2d: UNet2DConditionModel, motion: MotionModuleConfig | None = None) -> None:
        super().__init__()
        cfg = unet2d.config
        unsupported = [name for name in ("class_embedding", "add_embedding", "encoder_hid_proj")
                       if getattr(unet2d, name, None) is not None]
        if unsupported or cfg.get("addition_embed_type"):
            raise ValueError(f"unsupported UNet features for Live2Diff: {unsupported or cfg['addition_embed_type']}")
        self.config = dict(cfg)
        self.motion_config = motion or MotionModuleConfig()
        for name in _SPATIAL_PARTS:
            setattr(self, name, getattr(unet2d, name))
        index = 0
        per_module = self.motion_config.num_transformer_blocks * self.motion_config.num_attention_blocks
        stages = list(zip(self.down_blocks, cfg["block_out_channels"]))
        stages += list(zip(self.up_blocks, reversed(cfg["block_out_channels"])))
        for block, channels in stages:
            modules = []
            for _ in block.resnets:
                modules.append(MotionModule(channels, self.motion_config, index))
                index += per_module
            block.motion_modules = nn.ModuleList(modules)
        self.flow_conv_in = MappingNetwork(cfg["block_out_channels"][0], in_channels=cfg["in_channels"])
        install_fused_self_attention(self)

    # ------------------------------------------------------------------ info
    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    @property
    def max_frames(self) -> int:
        """Longest clip the positional table allows in a plain forward (the trained window is 16)."""
        return min(16, self.motion_config.max_positions)

    def attention_layers(self) -> list[TemporalSelfAttention]:
        """The temporal attention layers in cache order (down blocks, then up blocks; depth first)."""
        layers = [a for m in self._motion_modules() for a in m.attention_layers]
        assert [a.layer_index for a in layers] == list(range(len(layers)))
        return layers

    def _motion_modules(self) -> Iterable[MotionModule]:
        for block in list(self.down_blocks) + list(self.up_blocks):
            yield from block.motion_modules

    def _layer_resolutions(self, height: int, width: int) -> list[tuple[int, int]]:
        n = len(self.down_blocks)
        factor = 2 ** (n - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"latent size {height}x{width} must be divisible by {factor} (pixel size a multiple of {factor * 8})"
            )
        res = []
        for i, block in enumerate(self.down_blocks):
            res += [(height >> i, width >> i)] * len(block.motion_modules)
        for j, block in enumerate(self.up_blocks):
            res += [(height >> (n - 1 - j), width >> (n - 1 - j))] * len(block.motion_modules)
        return res

    # ------------------------------------------------------------------ cache
    def _geometry(self, height: int, width: int) -> list[LayerGeometry]:
        geometry = []
        for (h, w), module in zip(self._layer_resolutions(height, width), self._motion_modules()):
            channels = module.temporal_transformer.proj_in.in_features
            geometry += [LayerGeometry(h * w, channels)] * len(module.attention_layers)
        return geometry

    def cache_bytes(self, num_steps: int, height: int, width: int, *, window: int = 16) -> int:
        """Size in bytes of :meth:`new_cache` for these arguments (to reserve memory before allocating it)."""
        per_slot = sum(g.tokens * g.channels for g in self._geometry(height, width))
        return num_steps * 2 * window * per_slot * self.dtype.itemsize

    def new_cache(self, num_steps: int, height: int, width: int, *, window: int = 16, sinks: int = 8) -> KVCache:
        """A zeroed KV cache for ``num_steps`` denoising rows at latent size ``height x width``."""
        return KVCache.create(self._geometry(height, width), num_steps, window=window, sinks=sinks,
                              max_positions=self.motion_config.max_positions, dtype=self.dtype, device=self.device)

    # ------------------------------------------------------------------ forwards
    def forward(self, sample: Tensor, timestep: Tensor | float | int, encoder_hidden_states: Tensor,
                depth_latent: Tensor | None = None, num_warmup: int = 8) -> Tensor:
        """eps for a clip ``[B,4,F,h,w]`` (F <= 16) under the training mask (``num_warmup`` bidirectional frames)."""
        f = self._check_sample(sample, depth_latent)
        if f > self.max_frames:
            raise ValueError(f"a plain forward takes at most {self.max_frames} frames, got {f}; "
                             "use warm-up + streaming (or forward_with_plan) for longer clips")
        if num_warmup < 1:
            raise ValueError("num_warmup must be at least 1")
        plan = training_plan(f, num_warmup).to(sample.device)
        return self._run(sample, timestep, encoder_hidden_states, depth_latent, TemporalContext("full", f, plan))

    def forward_with_plan(self, sample: Tensor, timestep: Tensor | float | int, encoder_hidden_states: Tensor,
                          depth_latent: Tensor | None, plan: AttentionPlan) -> Tensor:
        """Non-cached pass over any number of frames with an explicit attention plan (reference computations)."""
        f = self._check_sample(sample, depth_latent)
        if plan.num_frames != f:
            raise ValueError(f"the plan covers {plan.num_frames} frames, the sample has {f}")
        if int(plan.key_pos.max()) >= self.motion_config.max_positions:
            raise ValueError("the plan uses positions beyond the positional-encoding table")
        ctx = TemporalContext("full", f, plan.to(sample.device))
        return self._run(sample, timestep, encoder_hidden_states, depth_latent, ctx)

    def warmup(self, sample: Tensor, timestep: Tensor | float | int, encoder_hidden_states: Tensor,
               depth_latent: Tensor | None, cache: KVCache, row: int) -> Tensor:
        """Bidirectional pass over the ``[1,4,W,h,w]`` warm-up frames; fills cache row ``row``; returns eps."""
        f = self._check_sample(sample, depth_latent)
        if sample.shape[0] != 1:
            raise ValueError(f"warm-up takes one clip (batch 1), got batch {sample.shape[0]}")
        if f != cache.sinks:
            raise ValueError(f"the cache expects {cache.sinks} warm-up frames, got {f}")
        self._check_cache(cache, sample)
        cache._check_row(row)
        if cache.calls:
            raise RuntimeError("the cache is already streaming; call cache.reset() before a new warm-up")
        ctx = TemporalContext("full", f, bidirectional_plan(f).to(sample.device), cache=cache, row=row)
        eps = self._run(sample, timestep, encoder_hidden_states, depth_latent, ctx)
        cache.mark_warm(row)
        return eps

    def stream(self, sample: Tensor, timesteps: Tensor, encoder_hidden_states: Tensor,
               depth_latent: Tensor | None, cache: KVCache, *, head_active: bool = True,
               runner: Callable[..., Tensor] | None = None) -> Tensor:
        """One pipelined streaming call: ``sample[i]`` (``[T,4,1,h,w]``) is a frame at denoising step ``i``.

        Returns eps ``[T,4,1,h,w]`` and advances the cache. Rows that hold no real frame (row ``i`` during the
        first ``i`` calls; row 0 when ``head_active`` is False, as while draining the pipeline) are computed but
        neither written to nor unmasked in the cache. ``runner`` (see :meth:`stream_runner`) replaces the eager
        forward, e.g. by a captured CUDA graph.
        """
        f = self._check_sample(sample, depth_latent)
        if f != 1:
            raise ValueError(f"streaming takes one frame per row, got {f}")
        if sample.shape[0] != cache.num_steps:
            raise ValueError(f"the cache has {cache.num_steps} rows, the sample batch is {sample.shape[0]}")
        if not cache.is_warm:
            missing = [i for i, w in enumerate(cache.warm) if not w]
            raise RuntimeError(f"cache rows {missing} have no warm-up; run warmup() for every row first")
        self._check_cache(cache, sample)
        tables = cache.tables(head_active)
        cache.record_call(tables)
        if runner is not None:
            eps = runner(sample, timesteps, encoder_hidden_states, depth_latent)
        else:
            eps = self._run(sample, timesteps, encoder_hidden_states, depth_latent,
                            TemporalContext("stream", 1, cache=cache, tables=tables))
        cache.advance(tables)
        return eps

    def stream_runner(self, cache: KVCache, acceleration: str = "none", **options: Any) -> CapturedCall:
        """The streaming forward for ``cache`` as a :class:`CapturedCall` (``"none"``, ``"cuda_graph"`` or
        ``"compile"``), for :meth:`stream`'s ``runner``; re-captured when the weights or the cache change."""
        unet = weakref.proxy(self)  # the call must not keep an evicted model alive

        def forward(sample: Tensor, timesteps: Tensor, text: Tensor, depth: Tensor | None) -> Tensor:
            return unet._run(sample, timesteps, text, depth,
                             TemporalContext("stream", 1, cache=cache, tables=cache.device_tables()))

        return CapturedCall(forward, acceleration, [unet], extra_state=cache.state_tensors,
                            name="Live2Diff streaming UNet", prepare=lambda: refresh_fused(unet), owner=self,
                            **options)

    # ------------------------------------------------------------------ internals
    def _check_sample(self, sample: Tensor, depth_latent: Tensor | None) -> int:
        if sample.dim() != 5:
            raise ValueError(f"sample must be [B,C,F,h,w], got shape {tuple(sample.shape)}")
        if sample.shape[1] != self.config["in_channels"]:
            raise ValueError(f"sample has {sample.shape[1]} channels, the UNet expects {self.config['in_channels']}")
        if sample.shape[2] < 1:
            raise ValueError("sample has no frames")
        if depth_latent is not None and depth_latent.shape != sample.shape:
            raise ValueError(
                f"depth_latent shape {tuple(depth_latent.shape)} does not match sample {tuple(sample.shape)}"
            )
        return int(sample.shape[2])

    def _check_cache(self, cache: KVCache, sample: Tensor) -> None:
        h, w = sample.shape[-2:]
        if cache.geometry() != self._geometry(h, w):
            raise ValueError(f"the cache was made for another model or latent size than {h}x{w}; make a new one")
        if cache.device != sample.device:
            raise ValueError(f"the cache is on {cache.device}, the sample on {sample.device}")
        if cache.dtype != self.dtype:
            raise ValueError(f"the cache dtype {cache.dtype} differs from the UNet's {self.dtype}")

    def _time_embedding(self, timestep: Tensor | float | int, batch: int, device: torch.device) -> Tensor:
        t = torch.as_tensor(timestep, device=device)
        if t.dim() == 0:
            t = t[None]
        if t.shape[0] == 1 and batch > 1:
            t = t.expand(batch)
        if t.shape[0] != batch:
            raise ValueError(f"timestep has {t.shape[0]} entries for a batch of {batch}")
        emb = self.time_proj(t).to(dtype=self.dtype)
        return self.time_embedding(emb)

    def _run(self, sample: Tensor, timestep: Tensor | float | int, encoder_hidden_states: Tensor,
             depth_latent: Tensor | None, ctx: TemporalContext) -> Tensor:
        b, c, f, h, w = sample.shape
        if encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[0] != b:
            raise ValueError(
                f"encoder_hidden_states must be [B,77,D] with B={b}, got {tuple(encoder_hidden_states.shape)}"
            )
        emb = self._time_embedding(timestep, b, sample.device).repeat_interleave(f, dim=0)
        text = encoder_hidden_states.to(self.dtype).repeat_interleave(f, dim=0)
        x = sample.to(self.dtype).transpose(1, 2).reshape(b * f, c, h, w)
        x = self.conv_in(x)
        if depth_latent is not None:
            d = depth_latent.to(self.dtype).transpose(1, 2).reshape(b * f, c, h, w)
            x = x + self.flow_conv_in(d)

        skips = [x]
        for block in self.down_blocks:
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn, motion in zip(block.resnets, attentions, block.motion_modules):
                x = resnet(x, emb)
                if attn is not None:
                    x = attn(x, encoder_hidden_states=text, return_dict=False)[0]
                x = motion(x, ctx)
                skips.append(x)
            for down in block.downsamplers or []:
                x = down(x)
                skips.append(x)

        mid = self.mid_block
        x = mid.resnets[0](x, emb)
        for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
            x = attn(x, encoder_hidden_states=text, return_dict=False)[0]
            x = resnet(x, emb)

        for i, block in enumerate(self.up_blocks):
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn, motion in zip(block.resnets, attentions, block.motion_modules):
                x = torch.cat([x, skips.pop()], dim=1)
                x = resnet(x, emb)
                if attn is not None:
                    x = attn(x, encoder_hidden_states=text, return_dict=False)[0]
                x = motion(x, ctx)
            if block.upsamplers:
                size = skips[-1].shape[-2:] if skips else None
                for up in block.upsamplers:
                    x = up(x, size)

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return x.reshape(b, f, -1, h, w).transpose(1, 2)
