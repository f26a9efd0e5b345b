"""Video files in and out frame by frame (live2diff_core.video_io): the streamed translation equals the whole-clip
one, pulls its input lazily (a few frames ahead of its output, whatever the length), and the files round-trip."""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from tiny import tiny_pipeline

from live2diff_core import video_io

SETTINGS = dict(width=64, height=64, t_index_list=(30, 40), seed=5, use_depth=False)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def _clip(n: int, h: int = 48, w: int = 80) -> torch.Tensor:
    """Smooth moving colour fields (what a codec keeps well)."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, 4, 6, generator=g) * 0.2 + torch.rand(1, 3, 4, 6, generator=g) * 0.8
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear").permute(0, 2, 3, 1).contiguous()


def test_streamed_translation_equals_the_whole_clip(pipe):
    frames = _clip(13)
    embeds = pipe.encode_prompt("a felted fox")
    whole = pipe(frames, prompt_embeds=embeds, **SETTINGS)
    got: list[torch.Tensor] = []
    n = video_io.translate_video(pipe, iter(frames), got.append, prompt_embeds=embeds, **SETTINGS)
    assert n == 13
    assert torch.equal(torch.stack(got), whole)


def test_input_is_pulled_a_few_frames_ahead_of_the_output(pipe):
    pulled, written = [0], []

    def source():
        for frame in _clip(40):
            pulled[0] += 1
            yield frame

    def write(frame):
        written.append(pulled[0] - len(written))  # frames pulled but not yet written, at each write

    video_io.translate_video(pipe, source(), write, prompt_embeds=pipe.encode_prompt(""), **SETTINGS)
    assert len(written) == 40
    assert max(written) <= 8 + len(SETTINGS["t_index_list"])  # the warm-up batch plus the pipeline's depth


def test_files_round_trip_frame_by_frame(pipe, tmp_path):
    frames = _clip(12, 48, 80)
    src = tmp_path / "in.mp4"
    with video_io.VideoWriter(src, Fraction(24000, 1001)) as w:
        for f in frames:
            w.write(f)
    info = video_io.probe(src)
    assert (info.width, info.height, info.fps) == (80, 48, Fraction(24000, 1001))
    decoded = list(video_io.read_video(src))
    assert len(decoded) == 12 and decoded[0].shape == (48, 80, 3)
    assert (torch.stack(decoded) - frames).abs().mean() < 0.03  # H.264 at CRF 18
    out = tmp_path / "out.mp4"
    with video_io.VideoWriter(out, info.fps) as w:
        n = video_io.translate_video(pipe, video_io.read_video(src), w.write,
                                     prompt_embeds=pipe.encode_prompt("a fox"), **SETTINGS)
    assert n == 12 and video_io.probe(out).frames in (0, 12)
    assert len(list(video_io.read_video(out))) == 12


def test_odd_sizes_drop_the_last_row_and_column(tmp_path):
    with video_io.VideoWriter(tmp_path / "odd.mp4", 10) as w:
        w.write(torch.rand(33, 47, 3))
        with pytest.raises(ValueError, match="is 30x20, the video is 46x32"):
            w.write(torch.rand(20, 30, 3))
    assert next(video_io.read_video(tmp_path / "odd.mp4")).shape == (32, 46, 3)
