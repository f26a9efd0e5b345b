"""Live2Diff core: uni-directional video UNet, multi-timestep KV cache, streaming engine and pixel pipeline.

Plain PyTorch/diffusers (no ComfyUI imports). See the README for the public API.
"""
from .attention_plan import AttentionPlan, bidirectional_plan, streaming_plan, training_plan
from .depth import DepthEstimator, depth_to_condition, load_depth_estimator
from .engine import StreamEngine
from .frame_filter import SimilarFrameFilter
from .kv_cache import KVCache
from .live_session import LiveSession, SessionStore
from .loader import load_unet
from .lora import load_lora_file, merge_lora
from .motion_module import MotionModuleConfig
from .pipeline import Live2DiffPipeline, StreamSettings
from .scheduler import make_lcm_scheduler, select_timesteps
from .sd_checkpoint import load_sd_vae, load_text_encoder
from .text_encoder import encode_prompt
from .vae import Vae, load_taesd
from .video_unet import VideoUNet

__all__ = [
    "AttentionPlan",
    "DepthEstimator",
    "KVCache",
    "Live2DiffPipeline",
    "LiveSession",
    "MotionModuleConfig",
    "SessionStore",
    "SimilarFrameFilter",
    "StreamEngine",
    "StreamSettings",
    "Vae",
    "VideoUNet",
    "bidirectional_plan",
    "depth_to_condition",
    "encode_prompt",
    "load_depth_estimator",
    "load_lora_file",
    "load_sd_vae",
    "load_taesd",
    "load_text_encoder",
    "load_unet",
    "make_lcm_scheduler",
    "merge_lora",
    "select_timesteps",
    "streaming_plan",
    "training_plan",
]
