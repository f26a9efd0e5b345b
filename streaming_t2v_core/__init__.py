"""StreamingT2V core: ModelScope text-to-video with CAM (short-term memory) and APM (long-term memory),
autoregressive long-video generation, the randomized-blend refiner and video metrics.

Plain PyTorch/diffusers (no ComfyUI imports). See the README for the public API.
"""
from . import metrics
from .image_encoder import ImageEncoder, load_image_encoder
from .loading import load_model
from .model import StreamingT2VModel
from .pipeline import GenerationSettings, StreamingT2VPipeline, chunk_plan
from .refiner import DenoiserAdapter, DiffusersVideoUNetAdapter, FrameSource, RandomizedBlendRefiner, load_refiner
from .weights_io import convert_checkpoint, read_checkpoint

__all__ = [
    "DenoiserAdapter",
    "DiffusersVideoUNetAdapter",
    "FrameSource",
    "GenerationSettings",
    "ImageEncoder",
    "RandomizedBlendRefiner",
    "StreamingT2VModel",
    "StreamingT2VPipeline",
    "chunk_plan",
    "convert_checkpoint",
    "load_image_encoder",
    "load_refiner",
    "load_model",
    "metrics",
    "read_checkpoint",
]
