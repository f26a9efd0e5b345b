"""Official-side driver of the StreamingT2V parity check (run by ``compare_streaming_t2v.py``; not imported by the
pack, except for :func:`toy_v_model`, the test harness's toy denoiser that both sides share).

Runs with the python of a *separate* virtual environment that holds the dependency versions the official
``StreamingModelscope`` code needs (torch, ``diffusers==0.27.2``, ``huggingface_hub<0.26``,
``transformers==4.39.3``, einops, pyyaml, safetensors, numpy, ``torchsde==0.2.6``). The official checkout (a
source tree of Picsart-AI-Research/StreamingT2V, branch ``StreamingModelscope``) is put on ``sys.path`` from the
command line; nothing of it is copied into this repository. The CPU workarounds are applied at run time only:

* a stub ``xformers`` / ``xformers.ops`` whose ``memory_efficient_attention`` is exact softmax attention in the
  input dtype, and diffusers' ``_xformers_available`` forced on (the official attention processor, which also
  holds the APM mixing, exists only on that path; without it inference crashes);
* stub ``open_clip`` / ``kornia`` / ``pytorch_lightning`` modules where they are not installed (only the OpenCLIP
  image embedder and the Lightning module use them; neither is exercised);
* the image encoder in ``UNetParams`` is a placeholder whose class is *named* ``FrozenOpenCLIPImageEmbedder``
  (the official UNet selects its token path by that name); image embeddings are given directly;
* (b) the vendored modelscope ``utils`` folder is imported as a standalone package (the modelscope package root
  pulls in the whole library); its module-level ``random`` is replaced by an injector that returns the offsets the
  comparison script drew and logs every ``randint`` call, and the DPM++ 2M SDE solver and ``denoise`` are wrapped
  to record every model call's input, per-chunk x0 and blended x0. Without ``torchsde`` a zero-noise Brownian tree
  stub is used (the recorded states then differ from a real run, the per-call comparison stays valid);
* (c) ``warp_with_flow`` and ``get_mawe`` are compiled from the AST of the checkout's ``mawe.py`` (its module level
  loads torchvision's RAFT weights); ``get_mawe`` runs with stand-ins for the video reader (the given uint8
  frames), the resize (identity: the metric is computed at the given size), the RAFT transforms (identity) and
  RAFT (returns the given flow for each pair), and with a ``torch`` proxy that records the per-pair warp errors and
  motions the function collects.

Inputs (in ``--work-dir``, written by ``compare_streaming_t2v.py``): ``config.json``, ``weights.safetensors``,
``inputs.safetensors``. Outputs: ``official_outputs.safetensors`` and ``official_report.json``.

Usage: ``<venv>/bin/python official_streaming_t2v.py --official-dir <checkout> --work-dir <dir>``
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import json
import sys
import types
from pathlib import Path

V2V_UTILS = Path("t2v_enhanced/thirdparty/modelscope/models/multi_modal/video_to_video/utils")
UNET_CONFIG_YAML = Path("t2v_enhanced/configs/text_to_video/config.yaml")
INFERENCE_YAML = Path("t2v_enhanced/configs/inference/inference_long_video.yaml")


def toy_v_model(x, t, y, p):
    """Deterministic toy v-prediction model shared by both sides of check (b).

    ``x [B, C, F, h, w]``, ``t`` (scalar or ``[B]``), ``y [B, L, D]``, ``p`` a dict of tensors ``mix [C, C]``,
    ``temporal [C]``, ``position [C]``, ``ctx [D, C]``. The chunk mean and the position ramp make a frame's
    prediction depend on the chunk it is seen in, so the blending is observable."""
    import torch

    b, c, f = x.shape[:3]
    t = torch.as_tensor(t, device=x.device).to(x.dtype).reshape(-1, 1, 1, 1, 1)
    h = torch.einsum("oc,bcfhw->bofhw", p["mix"].to(x.dtype), x)
    h = h + p["temporal"].to(x.dtype).view(1, c, 1, 1, 1) * x.mean(dim=2, keepdim=True)
    ramp = torch.linspace(-1.0, 1.0, f, dtype=x.dtype, device=x.device).view(1, 1, f, 1, 1)
    h = h + p["position"].to(x.dtype).view(1, c, 1, 1, 1) * ramp
    h = h + (y.to(x.dtype).mean(dim=1) @ p["ctx"].to(x.dtype)).view(y.shape[0], c, 1, 1, 1)
    return torch.tanh(h) * (1.0 + t / 1000.0) + 0.1 * x


# ----------------------------------------------------------------------------------------------------- stubs
def _stub(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def install_stubs(torch, attention: str = "exact", always: tuple[str, ...] = ()) -> list[str]:
    """An ``xformers`` stand-in and placeholders for absent optional packages (``always``: also when installed).
    Returns what was stubbed.

    ``attention="exact"``: softmax attention in the input dtype, 3D ``[B, M, K]`` (float64 parity);
    ``"sdpa"``: PyTorch's ``scaled_dot_product_attention``, 3D or 4D ``[B, M, H, K]`` (timing on a GPU)."""
    import torch.nn.functional as F

    def exact(q, k, v, attn_bias=None, op=None, scale=None):  # 3D (B, M, K), input dtype
        s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
        if attn_bias is not None:
            s = s + attn_bias
        return s.softmax(-1) @ v

    def sdpa(q, k, v, attn_bias=None, op=None, scale=None, p=0.0):
        # xformers' [B, M, K] (heads folded into B) or [B, M, H, K]; SDPA wants [B, H, M, K]
        if q.dim() == 3:
            mask = None if attn_bias is None else attn_bias.to(q.dtype).unsqueeze(1)
            out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), attn_mask=mask,
                                                 scale=scale)
            return out.squeeze(1)
        mask = None if attn_bias is None else attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask, scale=scale)
        return out.transpose(1, 2)

    if attention not in ("exact", "sdpa"):
        raise ValueError(f"attention must be 'exact' or 'sdpa', got {attention!r}")
    xf = _stub("xformers", __version__=f"stub-{attention}")
    xf.ops = _stub("xformers.ops", memory_efficient_attention=exact if attention == "exact" else sdpa)
    stubbed = ["xformers (exact attention)" if attention == "exact"
               else "xformers (memory_efficient_attention -> torch SDPA)"]

    class _Any:
        def __init__(self, *a, **k):
            pass

    for name, attrs in (("open_clip", {}), ("kornia", {}),
                        ("pytorch_lightning", {"LightningModule": torch.nn.Module, "Callback": _Any,
                                               "Trainer": _Any})):
        if name in always or importlib.util.find_spec(name) is None:
            _stub(name, **attrs)
            stubbed.append(name)
    import diffusers.utils.import_utils as iu

    iu._xformers_available = True
    return stubbed


def _unet_params_args(official: Path) -> dict:
    """``UNetParams`` init args of the shipped config, with the inference overrides (``inference_long_video``)."""
    import yaml

    base = yaml.safe_load((official / UNET_CONFIG_YAML).read_text())["model"]["unet_params"]["init_args"]
    over = yaml.safe_load((official / INFERENCE_YAML).read_text())["model"]["unet_params"]["init_args"]
    args = dict(base)
    args.update(over or {})
    return args


# --------------------------------------------------------------------------------------------- (a) model
def build_official_models(official: Path, torch, unet_cfg: dict, report: dict, device=None):
    """``(base, ctrl, resampler, unet_params)`` as ``VideoLDM.__init__`` (``video_ldm.py``) builds them, from the
    shipped ``UNetParams`` config and ``unet_cfg`` instead of ``from_pretrained``, with the official attention
    processors set; random weights (seed 0), on ``device`` (default: torch's default device)."""
    from t2v_enhanced.model.diffusers_conditional.models.controlnet.controlnet import ControlNetModel
    from t2v_enhanced.model.diffusers_conditional.models.controlnet.processor import \
        set_use_memory_efficient_attention_xformers
    from t2v_enhanced.model.diffusers_conditional.models.controlnet.unet_3d_condition import UNet3DConditionModel
    from t2v_enhanced.model.pl_module_params_controlnet import UNetParams
    from t2v_enhanced.utils.object_loader import instantiate_object

    class FrozenOpenCLIPImageEmbedder:  # only the class NAME matters to the UNet; sizes of ViT-H/14
        embedding_dim = 1024
        num_tokens = 1

    args = _unet_params_args(official)
    accepted = set(inspect.signature(UNetParams.__init__).parameters) - {"self"}
    report["unet_params_ignored_config_keys"] = sorted(k for k in args if k not in accepted)
    args = {k: v for k, v in args.items() if k in accepted}
    args["image_encoder_obj"] = FrozenOpenCLIPImageEmbedder()
    up = UNetParams(**args)
    report["unet_params"] = {k: getattr(up, k) for k in (
        "merging_mode_base", "merging_mode", "frame_expansion", "zero_conv_mode", "num_frames",
        "num_control_input_frames", "use_resampler", "use_image_tokens_main", "use_image_tokens_ctrl",
        "use_standard_attention_processor", "use_image_encoder_normalization", "resampler_cls")}

    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in unet_cfg.items() if not k.startswith("_")}
    torch.manual_seed(0)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        base = UNet3DConditionModel(**cfg, merging_mode=up.merging_mode_base,
                                    use_image_embedding=up.use_resampler and up.use_image_tokens_main,
                                    use_fps_conditioning=False, unet_params=up)
        ctrl = ControlNetModel.from_unet(
            unet=base, conditioning_embedding_out_channels=up.conditioning_embedding_out_channels,
            downsample_controlnet_cond=up.downsample_controlnet_cond,
            num_frames=up.num_frames if (up.frame_expansion != "none" or up.use_controlnet_mask)
            else up.num_control_input_frames,
            num_frame_conditioning=up.num_control_input_frames, frame_expansion=up.frame_expansion,
            pre_transformer_in_cond=up.pre_transformer_in_cond, num_tranformers=up.num_tranformers, vae=None,
            zero_conv_mode=up.zero_conv_mode, merging_mode=up.merging_mode, condition_encoder=up.condition_encoder,
            use_controlnet_mask=up.use_controlnet_mask,
            use_image_embedding=up.use_resampler and up.use_image_tokens_ctrl, unet_params=up,
            use_image_encoder_normalization=up.use_image_encoder_normalization)
        enc = up.image_encoder
        resampler = instantiate_object(up.resampler_cls, video_length=up.num_frames if up.num_frames > 1 else None,
                                       embedding_dim=enc.embedding_dim, input_tokens=enc.num_tokens,
                                       num_layers=up.resampler_merging_layers, aggregation=up.aggregation)
    set_use_memory_efficient_attention_xformers(ctrl, num_frame_conditioning=up.num_control_input_frames,
                                                num_frames=up.num_frames,
                                                attention_mask_params=up.attention_mask_params)
    set_use_memory_efficient_attention_xformers(base, num_frame_conditioning=up.num_control_input_frames,
                                                num_frames=up.num_frames,
                                                attention_mask_params=up.attention_mask_params_base)
    return base, ctrl, resampler, up


def run_model(official: Path, torch, cfg: dict, weights: dict, inputs: dict, out: dict, report: dict) -> None:
    from diffusers import UNet3DConditionModel as DiffusersUNet3D

    dtype = getattr(torch, cfg["dtype"])
    base, ctrl, resampler, _ = build_official_models(official, torch, cfg["unet_config"], report)
    unet_cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg["unet_config"].items()
                if not k.startswith("_")}
    # the first chunk's model: diffusers' own UNet3DConditionModel (TextToVideoSDPipeline), no CAM, no APM
    plain = DiffusersUNet3D(**unet_cfg)

    # --- weights: key check in both directions, then strict load
    keys: dict = {}
    for prefix, model in (("base_model.", base), ("unet.", ctrl), ("resampler.", resampler)):
        theirs = model.state_dict()
        ours = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        keys[prefix] = {
            "official_keys": len(theirs), "our_keys": len(ours),
            "missing_in_ours": sorted(k for k in theirs if k not in ours),
            "only_in_ours": sorted(k for k in ours if k not in theirs),
            "shape_mismatch": sorted(f"{k}: ours {list(ours[k].shape)} official {list(theirs[k].shape)}"
                                     for k in theirs if k in ours and tuple(ours[k].shape) != tuple(theirs[k].shape)),
        }
        model.load_state_dict(ours, strict=True)
    report["keys"] = keys
    report["our_prefixes"] = sorted({k.split(".", 1)[0] + "." for k in weights})
    base_sd = {k[len("base_model."):]: v for k, v in weights.items() if k.startswith("base_model.")}
    plain_keys = set(plain.state_dict())
    extra = sorted(k for k in base_sd if k not in plain_keys)
    report["base_only_plain_unet"] = {
        "plain_keys": len(plain_keys), "base_model_keys_not_in_plain": len(extra),
        "non_cam_apm_extras": [k for k in extra if not (k.startswith("cross_attention_merger_")
                                                        or ".attn2.conv." in k or ".attn2.conv_ln." in k
                                                        or k.endswith(".attn2.alpha"))]}
    plain.load_state_dict({k: v for k, v in base_sd.items() if k in plain_keys}, strict=True)
    base, ctrl, resampler, plain = (m.to(dtype).eval() for m in (base, ctrl, resampler, plain))

    lat, text, img, frames, t = (inputs[k] for k in ("a_lat", "a_text", "a_img", "a_frames", "a_t"))
    b, n_cond = frames.shape[:2]
    img_tok = resampler(img, batch_size=b)
    ehs = torch.cat([text, img_tok], dim=1)  # [B, 77 + 16, 1024], as the pipeline builds it
    down, mid = ctrl(lat, t, encoder_hidden_states=ehs, controlnet_cond=frames.reshape(b * n_cond, *frames.shape[2:]),
                     return_dict=False)
    for i, d in enumerate(down):
        out[f"a_cam_down_{i}"] = d
    out["a_cam_mid"] = mid
    out["a_img_tokens"] = img_tok
    out["a_full"] = base(lat, t, encoder_hidden_states=ehs, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample
    out["a_apm_only"] = base(lat, t, encoder_hidden_states=ehs).sample
    out["a_base_only"] = plain(lat, t, encoder_hidden_states=text).sample
    report["a_cam_down_count"] = len(down)


# ------------------------------------------------------------------------------ (b) randomized blending
class RandomInjector:
    """Stands in for the ``random`` module inside ``diffusion_sdedit``: ``randint`` pops the injected offsets."""

    def __init__(self, values):
        self.values = [int(v) for v in values]
        self.log: list[list[int]] = []

    def randint(self, a, b):
        if not self.values:
            raise RuntimeError(f"unexpected extra random.randint({a}, {b}) call")
        v = self.values.pop(0)
        if not a <= v <= b:
            raise RuntimeError(f"injected offset {v} is outside random.randint({a}, {b})")
        self.log.append([int(a), int(b), v])
        return v


def _import_v2v_utils(official: Path, torch, report: dict):
    folder = official / V2V_UTILS
    name = "_st2v_official_v2v_utils"
    if importlib.util.find_spec("torchsde") is None:  # fallback: zero-noise Brownian tree
        class _ZeroTree:
            def __init__(self, t0, w0, t1, entropy=None, **kwargs):
                self.w0 = w0

            def __call__(self, ta, tb):
                return torch.zeros_like(self.w0)

        _stub("torchsde", BrownianTree=_ZeroTree)
        report["b_sde_noise"] = "zero (torchsde not installed: stub)"
    else:
        report["b_sde_noise"] = "torchsde " + importlib.import_module("torchsde").__version__
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[name] = pkg
    spec.loader.exec_module(pkg)
    return (importlib.import_module(f"{name}.diffusion_sdedit"), importlib.import_module(f"{name}.schedules_sdedit"))


def run_blending(official: Path, torch, cfg: dict, inputs: dict, out: dict, report: dict) -> None:
    ds, sch = _import_v2v_utils(official, torch, report)
    rb = cfg["rb"]
    # as VideoToVideo.__init__ (video_to_video_model.py)
    sigmas = sch.noise_schedule(schedule="logsnr_cosine_interp", n=1000, zero_terminal_snr=True, scale_min=2.0,
                                scale_max=4.0)
    diffusion = ds.GaussianDiffusion_SDEdit(sigmas=sigmas, prediction_type="v")
    params = {k[len("b_toy_"):]: v for k, v in inputs.items() if k.startswith("b_toy_")}

    def model(xt, t, y):
        return toy_v_model(xt, t, y, params)

    injector = RandomInjector(inputs["b_offsets"][:, 1:].reshape(-1).tolist())
    ds.random = injector
    calls: list[dict] = []
    real_denoise = diffusion.denoise

    def denoise(xt, t, s, *a, **k):
        res = real_denoise(xt, t, s, *a, **k)
        cur = calls[-1]
        start = xt.storage_offset() // xt.stride(2)
        if not torch.equal(xt, cur["xt"][:, :, start:start + xt.shape[2]]):
            raise RuntimeError("could not locate the chunk in the model input")
        cur["starts"].append(start)
        cur["chunks"].append(res[-2].clone())
        cur["t"].append(int(t.flatten()[0]))
        return res

    diffusion.denoise = denoise
    real_solver = ds.sample_dpmpp_2m_sde

    def recording_solver(noise, model_fn, sigmas, **kwargs):
        def wrapped(xt, sigma, i):
            calls.append({"xt": xt.clone(), "starts": [], "chunks": [], "t": [], "sigma": float(sigma)})
            x0 = model_fn(xt, sigma, i)
            calls[-1]["x0"] = x0.clone()
            return x0

        return real_solver(noise, wrapped, sigmas, **kwargs)

    ds.sample_dpmpp_2m_sde = recording_solver
    t_start = rb["t_start"]
    t = torch.tensor([t_start], dtype=torch.long)
    xt = diffusion.diffuse(inputs["b_latents"], t, inputs["b_noise"])
    # the arguments of VideoToVideo.forward (video_to_video_model.py), chunk layout from the config
    result = diffusion.sample(noise=xt, model=model, model_kwargs=[{"y": inputs["b_cond"]}, {"y": inputs["b_uncond"]}],
                              guide_scale=rb["guide_scale"], guide_rescale=rb["guide_rescale"],
                              solver="dpmpp_2m_sde", steps=rb["steps"], t_max=t_start, t_min=0,
                              discretization="trailing", chunk_size=rb["chunk"], overlap_size=rb["overlap"], seed=0,
                              show_progress=False)
    starts = [c["starts"] for c in calls]
    if any(s != starts[0] for s in starts):
        raise RuntimeError(f"chunk layout changed between calls: {starts}")
    out["b_xt"] = torch.stack([c["xt"] for c in calls])
    out["b_x0"] = torch.stack([c["x0"] for c in calls])
    out["b_chunk_x0"] = torch.stack([torch.stack(c["chunks"]) for c in calls])
    out["b_t"] = torch.tensor([c["t"][0] for c in calls], dtype=torch.long)
    out["b_alphas"] = diffusion.alphas.clone()
    out["b_sigmas"] = diffusion.sigmas.clone()
    out["b_result"] = result
    report["b_calls"] = len(calls)
    report["b_starts"] = starts[0]
    report["b_t_per_call_all_chunks_equal"] = all(len(set(c["t"])) == 1 for c in calls)
    report["b_randint_log"] = injector.log
    report["b_unused_offsets"] = len(injector.values)
    report["b_sigmas_per_call"] = [c["sigma"] for c in calls]


# ------------------------------------------------------------------------------------------- (c) MAWE
class _TorchRecorder:
    """``torch`` for the AST-compiled ``get_mawe``: records the lists passed to ``torch.tensor``."""

    def __init__(self, torch):
        self._torch = torch
        self.tensor_args: list = []

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def tensor(self, data, *a, **k):
        self.tensor_args.append(list(data) if isinstance(data, list) else data)
        return self._torch.tensor(data, *a, **k)


def _mawe_functions(official: Path, torch, flows):
    import torch.nn.functional as tF

    path = official / "mawe.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}

    def compile_fn(name, namespace):
        module = ast.Module(body=[defs[name]], type_ignores=[])
        exec(compile(module, str(path), "exec"), namespace)
        return namespace[name]

    warp = compile_fn("warp_with_flow", {"torch": torch, "grid_sample": tF.grid_sample, "device": "cpu"})
    state = {"video": None, "pair": 0, "resize_calls": 0}

    def read_video(path, pts_unit="sec", output_format="TCHW"):
        return state["video"], None, {}

    def resize(x, size, antialias=None):  # identity: the metric is computed at the given size
        state["resize_calls"] += 1
        return x

    def transforms(left, right):
        return left, right

    def raft(left, right):
        k = state["pair"]
        video = state["video"]
        if not (torch.equal(left, video[k:k + 1]) and torch.equal(right, video[k + 1:k + 2])):
            raise RuntimeError(f"get_mawe passed unexpected frames for pair {k}")
        state["pair"] += 1
        return [flows[k:k + 1]]

    recorder = _TorchRecorder(torch)
    ns = {"torch": recorder, "read_video": read_video, "F": types.SimpleNamespace(resize=resize),
          "transforms": transforms, "model": raft, "device": "cpu", "warp_with_flow": warp}
    get_mawe = compile_fn("get_mawe", ns)
    return warp, get_mawe, state, recorder


def run_mawe(official: Path, torch, cfg: dict, inputs: dict, out: dict, report: dict) -> None:
    warp, get_mawe, state, recorder = _mawe_functions(official, torch, inputs["c_flows"])
    warped, occ = warp(inputs["c_warp_img"], inputs["c_warp_flow"])
    out["c_warped"] = warped
    out["c_occ"] = occ
    state["video"] = inputs["c_video"]
    value = get_mawe("video.mp4", coeff=cfg["mawe_coeff"])
    warp_errors, motions = recorder.tensor_args[-2], recorder.tensor_args[-1]
    out["c_mawe"] = torch.as_tensor(value).reshape(1).to(torch.float64)
    out["c_warp_errors"] = torch.tensor(warp_errors, dtype=torch.float64)
    out["c_motions"] = torch.tensor(motions, dtype=torch.float64)
    report["c_pairs"] = state["pair"]
    report["c_resize_calls"] = state["resize_calls"]
    report["c_mawe_dtype"] = str(torch.as_tensor(value).dtype)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official-dir", required=True, help="source tree of StreamingT2V (StreamingModelscope)")
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    official = Path(args.official_dir).resolve()
    work = Path(args.work_dir).resolve()

    import torch

    stubbed = install_stubs(torch)
    sys.path.insert(0, str(official))
    import diffusers
    from safetensors.torch import load_file, save_file

    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    cfg = json.loads((work / "config.json").read_text())
    weights = load_file(str(work / "weights.safetensors"))
    inputs = load_file(str(work / "inputs.safetensors"))
    report: dict = {"official_dir": str(official), "torch": torch.__version__, "diffusers": diffusers.__version__,
                    "stubbed_modules": stubbed}
    out: dict = {}
    run_model(official, torch, cfg, weights, inputs, out, report)
    run_blending(official, torch, cfg, inputs, out, report)
    run_mawe(official, torch, cfg, inputs, out, report)
    save_file({k: v.detach().contiguous().clone() for k, v in out.items()},
              str(work / "official_outputs.safetensors"))
    (work / "official_report.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"official driver done: {len(out)} tensors written to {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
