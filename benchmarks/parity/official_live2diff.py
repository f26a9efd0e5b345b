"""Official-side driver of the Live2Diff parity check (run by ``compare_live2diff.py``; not imported by the pack).

Runs with the python of a *separate* virtual environment that holds the dependency versions the official code
needs (torch, ``diffusers==0.25.0``, ``huggingface_hub<0.26``, ``transformers<4.50``, einops, omegaconf,
safetensors, numpy). The official checkout is put on ``sys.path`` from the command line; nothing of it is copied
into this repository. The CPU workarounds are applied at run time as monkeypatches only:

* ``torch.Tensor.cuda`` returns the tensor itself (the streaming tables are moved with ``.cuda()``);
* the warm-up UNet's ``.to`` ignores ``device="cuda"`` (``prepare`` moves it there and back);
* both UNets are built from a config instead of ``from_pretrained_2d`` (which hard-codes CUDA);
* the per-frame path calls ``encode_image`` + ``predict_x0_batch`` directly (``__call__`` uses CUDA events);
* ``torch.randn``/``torch.randn_like`` are replaced, while the pipeline runs, by a queue of the noise tensors the
  comparison script wrote (the official code draws unseeded noise), each draw checked for its expected shape.

Inputs (in ``--work-dir``, written by ``compare_live2diff.py``): ``config.json``, ``weights.safetensors``,
``inputs.safetensors``. Outputs: ``official_outputs.safetensors`` and ``official_report.json``.

Usage: ``<venv>/bin/python official_live2diff.py --official-dir <checkout> --work-dir <dir>``
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import types
from pathlib import Path

_BLOCK_3D = {
    "CrossAttnDownBlock2D": "CrossAttnDownBlock3D",
    "DownBlock2D": "DownBlock3D",
    "CrossAttnUpBlock2D": "CrossAttnUpBlock3D",
    "UpBlock2D": "UpBlock3D",
}


class NoiseQueue:
    """Replaces ``torch.randn``/``torch.randn_like`` with pops from a list of (label, tensor)."""

    def __init__(self, torch, items):
        self.torch = torch
        self.items = list(items)
        self.log: list[str] = []

    def _pop(self, shape, dtype, device):
        if not self.items:
            raise RuntimeError(f"unexpected extra noise draw of shape {tuple(shape)}")
        label, tensor = self.items.pop(0)
        if tuple(tensor.shape) != tuple(shape):
            raise RuntimeError(f"noise draw '{label}': expected shape {tuple(tensor.shape)}, the code asked for "
                               f"{tuple(shape)}")
        self.log.append(f"{label}:{list(shape)}")
        return tensor.clone().to(device=device if device is not None else "cpu",
                                 dtype=dtype if dtype is not None else tensor.dtype)

    def __enter__(self):
        torch = self.torch
        self._orig = (torch.randn, torch.randn_like)

        def randn(*size, generator=None, dtype=None, device=None, **kwargs):
            if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
                size = tuple(size[0])
            return self._pop(size, dtype, device)

        def randn_like(x, *, dtype=None, device=None, **kwargs):
            return self._pop(x.shape, dtype or x.dtype, device or x.device)

        torch.randn, torch.randn_like = randn, randn_like
        return self

    def __exit__(self, *exc):
        self.torch.randn, self.torch.randn_like = self._orig
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official-dir", required=True, help="checkout of open-mmlab/Live2Diff (source tree)")
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    official = Path(args.official_dir).resolve()
    work = Path(args.work_dir).resolve()
    sys.path.insert(0, str(official))

    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import load_file, save_file

    # --- CPU workaround 1: the streaming tables call .cuda()
    torch.Tensor.cuda = lambda self, *a, **k: self

    from diffusers import DDIMScheduler

    from live2diff.animatediff.models.unet_depth_streaming import UNet3DConditionStreamingModel
    from live2diff.animatediff.models.unet_depth_warmup import UNet3DConditionWarmupModel
    from live2diff.animatediff.pipeline.pipeline_animatediff_depth import AnimationDepthPipeline
    from live2diff.pipeline_stream_animation_depth import StreamAnimateDiffusionDepth

    cfg = json.loads((work / "config.json").read_text())
    dtype = getattr(torch, cfg["dtype"])
    T, N, h, w = cfg["num_steps"], cfg["num_frames"], cfg["latent_h"], cfg["latent_w"]
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)

    # --- models from the official base_config (CPU workaround 3: from a config, not from_pretrained_2d)
    base = OmegaConf.to_container(OmegaConf.load(official / "configs" / "base_config.yaml"))
    stream_kwargs = base["unet_additional_kwargs"]
    warm_kwargs = copy.deepcopy(stream_kwargs)
    # the same overrides as UNet3DConditionWarmupModel.from_pretrained_2d
    warm_kwargs["motion_module_type"] = "Vanilla"
    warm_kwargs["motion_module_kwargs"]["attention_class_name"] = "versatile"
    warm_kwargs["motion_module_kwargs"]["attention_kwargs"] = {}
    unet_cfg = {k: v for k, v in cfg["unet_config"].items() if not k.startswith("_")}
    unet_cfg["down_block_types"] = [_BLOCK_3D[b] for b in unet_cfg["down_block_types"]]
    unet_cfg["up_block_types"] = [_BLOCK_3D[b] for b in unet_cfg["up_block_types"]]
    torch.manual_seed(0)
    stream_unet = UNet3DConditionStreamingModel.from_config(dict(unet_cfg), **copy.deepcopy(stream_kwargs))
    warm_unet = UNet3DConditionWarmupModel.from_config(dict(unet_cfg), **warm_kwargs)
    stream_unet = stream_unet.to(dtype).eval()
    warm_unet = warm_unet.to(dtype).eval()

    # --- weights: strict key check in both directions, then strict load
    ours = load_file(str(work / "weights.safetensors"))
    report: dict = {"official_dir": str(official), "torch": torch.__version__}
    import diffusers

    report["diffusers"] = diffusers.__version__
    for name, model in (("streaming", stream_unet), ("warmup", warm_unet)):
        theirs = model.state_dict()
        missing = sorted(k for k in theirs if k not in ours)
        unexpected = sorted(k for k in ours if k not in theirs)
        shape = sorted(f"{k}: ours {list(ours[k].shape)} official {list(theirs[k].shape)}"
                       for k in theirs if k in ours and tuple(theirs[k].shape) != tuple(ours[k].shape))
        report[f"keys_{name}"] = {"official_keys": len(theirs), "our_keys": len(ours),
                                  "missing_in_ours": missing, "only_in_ours": unexpected, "shape_mismatch": shape}
        model.load_state_dict(ours, strict=True)

    inputs = load_file(str(work / "inputs.safetensors"))
    ehs = inputs["ehs"]  # [1, 77, D]
    out: dict[str, torch.Tensor] = {}

    # cache layer order as assigned by the official set_info_for_attn
    stream_unet.set_info_for_attn(h, w)
    warm_unet.set_info_for_attn(h, w)
    order = {}
    for mod_name, mod in stream_unet.named_modules():
        if hasattr(mod, "set_cache"):
            order[mod_name] = [int(mod.motion_module_idx), int(mod.h), int(mod.w)]
    warm_order = {n: int(m.motion_module_idx) for n, m in warm_unet.named_modules() if hasattr(m, "set_index")
                  and getattr(m, "motion_module_idx", None) is not None}
    report["layer_order"] = order
    report["warmup_layer_order_equal"] = warm_order == {k: v[0] for k, v in order.items()}

    # ------------------------------------------------------------ (a) warm-up UNet filling the cache rows
    kv = stream_unet.prepare_cache(T)  # zeros [T, 2, hw, 16, C] per layer; also registers q/k/v_pe buffers
    a_eps = []
    for i in range(T):
        t = inputs["a_t"][i].view(1).repeat(1)
        res = warm_unet(inputs["a_x"][i], t, temporal_attention_mask=None, depth_sample=inputs["a_d"][i],
                        encoder_hidden_states=ehs, kv_cache=[c[i] for c in kv], return_dict=True)
        a_eps.append(res["sample"])
    out["a_eps"] = torch.stack(a_eps)
    for n, c in enumerate(kv):
        out[f"a_cache_{n}"] = c.clone()

    # ------------------------------------------------------------ (b) streaming with the official table rules
    tables_self = types.SimpleNamespace(denoising_steps_num=T, dtype=dtype, device=torch.device("cpu"))
    bias, pe_idx, update_idx = StreamAnimateDiffusionDepth.initialize_attn_bias_pe_and_update_idx(tables_self)
    b_eps, b_bias, b_pe, b_upd = [], [], [], []
    ehs_t = ehs.repeat(T, 1, 1)
    for k in range(inputs["b_x"].shape[0]):
        b_bias.append(bias.clone())
        b_pe.append(pe_idx.clone())
        b_upd.append(update_idx.clone())
        res = stream_unet(inputs["b_x"][k], inputs["b_t"], encoder_hidden_states=ehs_t,
                          temporal_attention_mask=bias, depth_sample=inputs["b_d"][k], kv_cache=kv,
                          pe_idx=pe_idx, update_idx=update_idx, return_dict=True)
        b_eps.append(res["sample"])
        kv = res["kv_cache"]
        bias, pe_idx, update_idx = StreamAnimateDiffusionDepth.update_attn_bias(tables_self, bias, pe_idx,
                                                                                update_idx)
    out["b_eps"] = torch.stack(b_eps)
    out["b_bias"] = torch.stack(b_bias)
    out["b_pe_idx"] = torch.stack(b_pe)
    out["b_update_idx"] = torch.stack(b_upd)
    for n, c in enumerate(kv):
        out[f"b_cache_{n}"] = c.clone()

    # ------------------------------------------------------------ (c) StreamAnimateDiffusionDepth end to end
    class FakeVae:  # TAESD-like: encode returns `.latents`; identity at latent level, scaling factor 1
        config = types.SimpleNamespace(scaling_factor=1.0, block_out_channels=[1, 1, 1, 1])

        def __init__(self):
            self.dtype = dtype

        def encode(self, x):
            return types.SimpleNamespace(latents=x)

        def decode(self, x, return_dict=False):
            return (x,)

    class FakePipe:
        device = torch.device("cpu")
        vae_scale_factor = 8

        def __init__(self):
            self.scheduler = DDIMScheduler(**base["noise_scheduler_kwargs"])  # as build_pipeline
            self.vae = FakeVae()
            self.unet = stream_unet
            self.text_encoder = None
            self.depth_model = None

        def _encode_prompt(self, **kwargs):  # fake text encoder: the shared embeddings
            assert kwargs.get("do_classifier_free_guidance") is False
            return ehs.clone()

        prepare_cache = AnimationDepthPipeline.prepare_cache
        prepare_warmup_unet = AnimationDepthPipeline.prepare_warmup_unet

    pipe = FakePipe()
    stream = StreamAnimateDiffusionDepth(pipe, num_inference_steps=cfg["num_inference_steps"],
                                         t_index_list=list(cfg["t_index_list"]), torch_dtype=dtype,
                                         width=w * 8, height=h * 8, do_add_noise=True, use_denoising_batch=True,
                                         frame_buffer_size=1, clip_skip=2, cfg_type="none")
    # CPU workaround 2: prepare() moves the warm-up UNet to "cuda" and back
    real_to = warm_unet.to

    def to_ignoring_device(*a, **k):
        k.pop("device", None)
        a = tuple(x for x in a if not (isinstance(x, (str, torch.device)) and str(x).startswith(("cuda", "cpu"))))
        return real_to(*a, **k)

    warm_unet.to = to_ignoring_device
    stream.unet_warmup = warm_unet
    pipe.unet_warmup = warm_unet
    stream.prepare_cache(height=h * 8, width=w * 8, denoising_steps_num=T)
    # fake depth estimator: the depth latents are given directly (latent-level comparison)
    stream.encode_depth = lambda x: inputs["c_warm_depth"].clone()
    # decode to the latent itself (the official decode clips to [-1, 1], which is a pixel-space step)
    stream.decode_image = lambda x: x

    nw = inputs["c_warm_noise"]  # [T, 8, 4, h, w]
    items = [("init_noise (unused with cfg none)", torch.zeros(T, 4, 8, h, w, dtype=dtype)),
             ("warmup encode_image", nw[0])]
    for i in range(1, T):
        items.append((f"warmup re-noise to step {i}", nw[i].transpose(0, 1)[None]))
    with NoiseQueue(torch, items) as q:
        warm_x0 = stream.prepare(inputs["c_warm_lat"], prompt="parity")
    out["c_warm_x0"] = warm_x0
    noise_log = list(q.log)

    ns = inputs["c_noise"]  # [N + T - 1, T, 4, h, w]
    lat, dep = inputs["c_lat"], inputs["c_depth"]
    c_out = []
    for k in range(ns.shape[0]):
        if k < N:
            x, d = lat[k:k + 1], dep[k:k + 1]
        else:  # drain the pipeline with dummy frames (the official code has no flush)
            x, d = torch.zeros_like(lat[:1]), torch.zeros_like(dep[:1])
        items = [(f"frame {k} encode_image", ns[k, 0:1])]
        if T > 1:
            items.append((f"frame {k} re-noise", ns[k, 1:, :, None]))
        with NoiseQueue(torch, items) as q:
            x_t = stream.encode_image(x)
            x0 = stream.predict_x0_batch(x_t.unsqueeze(2), d.unsqueeze(2))
        noise_log += q.log
        c_out.append(x0[:, :, 0])
    out["c_out"] = torch.cat(c_out)  # call k's output is frame k - (T - 1)
    out["c_sub_timesteps"] = stream.sub_timesteps_tensor.clone()
    out["c_alpha_sqrt"] = stream.alpha_prod_t_sqrt.flatten().clone()
    out["c_beta_sqrt"] = stream.beta_prod_t_sqrt.flatten().clone()
    out["c_skip"] = stream.c_skip.flatten().clone()
    out["c_out_coef"] = stream.c_out.flatten().clone()
    report["noise_draws"] = noise_log
    report["scheduler_timesteps_50"] = [int(t) for t in stream.timesteps]

    save_file({k: v.contiguous().clone() for k, v in out.items()}, str(work / "official_outputs.safetensors"))
    (work / "official_report.json").write_text(json.dumps(report, indent=1))
    print(f"official driver done: {len(out)} tensors written to {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
