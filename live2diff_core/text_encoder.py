"""Prompt encoding with the SD1.x CLIP text encoder, as the official Live2Diff pipeline does it.

Official: ``AnimationDepthPipeline._encode_prompt`` with ``clip_skip=2`` (every Live2Diff config) takes
``hidden_states[-(clip_skip + 1)]`` of the 12-layer CLIP ViT-L/14 text transformer and applies the model's final
LayerNorm. ``hidden_states`` has 13 entries (``[0]`` = token + position embeddings, ``[i]`` = output of transformer
layer ``i``), so that is ``hidden_states[10]``: the output of layer 10 of 12, then ``final_layer_norm``.

Equivalent names for this choice (``clip_layer=10``), checked against each project's code:

* diffusers ``StableDiffusionPipeline(..., clip_skip=2)``: ``hidden_states[-(clip_skip + 1)]`` + final LayerNorm;
  (diffusers ``clip_skip=1`` is the penultimate layer).
* AUTOMATIC1111 "Clip skip" = 3 (``CLIP_stop_at_last_layers``): ``hidden_states[-3]`` + final LayerNorm
  (A1111 "Clip skip 2" is the penultimate layer, 1 = last layer).
* ComfyUI ``CLIPSetLastLayer(stop_at_clip_layer=-3)``: layer index ``12 - 3 = 9`` counted from 0, i.e. the output
  of the 10th layer, with the final LayerNorm (SD1.x CLIP in ComfyUI normalises intermediate outputs);
  ComfyUI's default ``-1`` is the last layer.

General rule for a 12-layer encoder: ``clip_layer = L`` <=> diffusers ``clip_skip = 12 - L`` <=> A1111
``Clip skip = 13 - L`` <=> ComfyUI ``CLIPSetLastLayer(L - 13)``. ``clip_layer = 12`` is the plain
``last_hidden_state``. (Prompt weighting / long prompts of A1111 and ComfyUI are not reproduced: prompts are
truncated to 77 tokens like the official pipeline.)
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["encode_prompt", "DEFAULT_CLIP_LAYER"]

#: Official Live2Diff setting: output of CLIP text layer 10 of 12 (``clip_skip=2``), then the final LayerNorm.
DEFAULT_CLIP_LAYER = 10


def _final_layer_norm(text_encoder: Any) -> torch.nn.Module:
    # transformers < 5.6 wraps the transformer in ``.text_model``; later versions flattened CLIPTextModel.
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


@torch.no_grad()
def encode_prompt(
    tokenizer: Any, text_encoder: Any, prompts: str | list[str], *, clip_layer: int = DEFAULT_CLIP_LAYER
) -> Tensor:
    """Prompt embeddings ``[B, 77, D]``: ``final_layer_norm(hidden_states[clip_layer])`` of the CLIP text encoder.

    ``hidden_states[0]`` is the embedding output and ``hidden_states[i]`` the output of transformer layer ``i``
    (1-based), so the default ``clip_layer=10`` is the official Live2Diff / diffusers ``clip_skip=2`` /
    A1111 "Clip skip 3" / ComfyUI ``CLIPSetLastLayer(-3)`` embedding (see module docstring). Prompts are padded with
    the tokenizer's pad token (``<|endoftext|>`` for SD1.5) and truncated to ``max_position_embeddings`` (77) tokens;
    no attention mask is passed (as in SD1.5). Output dtype/device: the text encoder's.
    """
    num_layers = int(text_encoder.config.num_hidden_layers)
    if isinstance(clip_layer, bool) or not isinstance(clip_layer, int) or not 1 <= clip_layer <= num_layers:
        raise ValueError(f"clip_layer must be an int in 1..{num_layers} (10 = official Live2Diff), got {clip_layer!r}")
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a string or a non-empty list of strings")
    max_length = int(text_encoder.config.max_position_embeddings)
    ids = tokenizer(
        list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids
    param = next(text_encoder.parameters())
    out = text_encoder(input_ids=ids.to(param.device), output_hidden_states=True)
    hidden = out.hidden_states[clip_layer]
    return _final_layer_norm(text_encoder)(hidden)
