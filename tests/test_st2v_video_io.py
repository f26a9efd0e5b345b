"""streaming_t2v_core.video_io.encode_mp4: the frame-by-frame H.264 writer of ST2V_SaveVideo."""
from __future__ import annotations

import json

import numpy as np
import pytest

from streaming_t2v_core.video_io import encode_mp4

av = pytest.importorskip("av")


def _frames(n: int, h: int, w: int):
    for i in range(n):
        arr = np.zeros((h, w, 3), np.uint8)
        arr[..., 0] = 40 + 20 * i
        arr[..., 1] = 128
        arr[..., 2] = 200
        yield arr


def test_encodes_frame_by_frame_with_metadata_and_odd_sizes(tmp_path):
    path = tmp_path / "v.mp4"
    done = []
    meta = {"prompt": {"1": {"class_type": "X"}}, "workflow": {"nodes": []}}
    assert encode_mp4(_frames(5, 33, 47), path, 8.0, metadata=meta, progress=done.append) == 5
    assert done == [1, 2, 3, 4, 5]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (48, 34)  # padded by one edge pixel
        assert float(stream.average_rate) == 8.0
        assert json.loads(container.metadata["prompt"]) == meta["prompt"]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == 5
    for i, arr in enumerate(decoded):
        assert abs(float(arr[..., 0].mean()) - (40 + 20 * i)) < 6 and abs(float(arr[..., 2].mean()) - 200) < 6


def test_failures_leave_no_file(tmp_path):
    path = tmp_path / "v.mp4"
    with pytest.raises(ValueError, match="no frames"):
        encode_mp4(iter(()), path, 8.0)
    assert not path.exists()

    def mixed():
        yield from _frames(2, 32, 32)
        yield np.zeros((16, 32, 3), np.uint8)

    with pytest.raises(ValueError, match="frame 2 is 32x16, the video is 32x32"):
        encode_mp4(mixed(), path, 8.0)
    assert not path.exists()
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4([np.zeros((8, 8, 3), np.float32)], path, 8.0)
    assert not path.exists()
