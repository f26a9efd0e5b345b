"""Live2Diff on ComfyUI's VIDEO (issue 12): Load Video -> Live2Diff Video to Video (VIDEO, streamed) -> Save Video
runs frame by frame and gives the frames of the IMAGE path (Get Video Components -> Live2Diff Video to Video) up to
the video codec; a cancelled run leaves no file behind."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from graphs import SIZE, l2d_loader

from client import Graph

SETTINGS = dict(t_index_list="30,40", strength=0.0, steps=50, seed=4, use_depth=True, invert_depth=False, **SIZE)


def _clip(comfy, name: str, frames: int = 14) -> str:
    import av

    path = Path(comfy.server.run_dir) / "input" / name
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=12, options={"crf": "12"})
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        y, x = np.mgrid[0:64, 0:96]
        for i in range(frames):
            rgb = np.stack([(x * 2 + i * 6) % 256, (y * 3 + i * 4) % 256, np.full_like(x, 90 + i * 5)], -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.name


def _streamed(m, clip: str, prefix: str):
    """Load Video -> Live2Diff Video to Video (VIDEO, streamed) -> Save Video; ``(graph, model, cond, video)``."""
    g = Graph()
    model = g.node("L2D_LoadModel", **l2d_loader(m))
    cond = g.node("L2D_EncodePrompt", model=model.out(0), text="a felted fox", clip_layer=10)
    video = g.node("LoadVideo", file=clip)
    streamed = g.node("L2D_VideoToVideoStreamed", model=model.out(0), video=video.out(0), conditioning=cond.out(0),
                      **SETTINGS)
    g.node("SaveVideo", video=streamed.out(0), filename_prefix=prefix, format="mp4", codec="h264")
    return g, model, cond, video


def _frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.int16)


def test_video_in_video_out_equals_the_image_path(comfy, comfy_models):
    g, model, cond, video = _streamed(comfy_models, _clip(comfy, "streamed_in.mp4"), "l2d_streamed")
    parts = g.node("GetVideoComponents", video=video.out(0))
    images = g.node("L2D_VideoToVideo", model=model.out(0), images=parts.out(0), conditioning=cond.out(0),
                    **SETTINGS)
    shown = g.node("PreviewImage", images=images.out(0))
    entry = comfy.run(g.prompt(), timeout=300)
    saved = [f for out in entry.outputs.values() for f in out.get("images", []) if f["filename"].endswith(".mp4")]
    assert len(saved) == 1, entry.outputs
    out = _frames(Path(comfy.server.run_dir) / "output" / saved[0].get("subfolder", "") / saved[0]["filename"])
    reference = np.stack([np.asarray(im.convert("RGB"), dtype=np.int16) for im in comfy.read_images(entry, shown.id)])
    assert out.shape == reference.shape == (14, 64, 96, 3)
    diff = np.abs(out - reference)
    assert diff.mean() < 3.0, diff.mean()  # H.264 at CRF 18 on top of the same frames


def test_too_short_a_video_fails_and_leaves_no_file(comfy, comfy_models):
    name = _clip(comfy, "streamed_short.mp4", frames=5)
    temp = Path(comfy.server.run_dir) / "temp" / "live2diff"
    before = set(temp.glob("*.mp4")) if temp.is_dir() else set()
    g, *_ = _streamed(comfy_models, name, "l2d_short")
    entry = comfy.run(g.prompt(), expect="error", timeout=300)
    assert "fewer than the 8 the warm-up needs" in entry.error["exception_message"]
    after = set(temp.glob("*.mp4")) if temp.is_dir() else set()
    assert after == before
