"""Live2Diff core: uni-directional video UNet, multi-timestep KV cache, streaming engine and pixel pipeline.

Plain PyTorch/diffusers (no ComfyUI imports). See the README for the public API.
"""
from .attention_plan import AttentionPlan, bidirectional_plan, streaming_plan, training_plan
from .kv_cache import KVCache
from .motion_module import MotionModuleConfig
from .video_unet import VideoUNet

__all__ = [
    "AttentionPlan",
    "KVCache",
    "MotionModuleConfig",
    "VideoUNet",
    "bidirectional_plan",
    "streaming_plan",
    "training_plan",
]
