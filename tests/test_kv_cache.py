"""KV cache object: geometry, size, clone/move/reset, and long-stream structural invariants."""
from __future__ import annotations

import pytest
import torch
from tiny import tiny_video_unet
from torch.utils.flop_counter import FlopCounterMode

from live2diff_core.engine import StreamEngine
from live2diff_core.kv_cache import KVCache, LayerGeometry
from live2diff_core.loader import build_video_unet
from live2diff_core.sd_checkpoint import SHIPPED_CONFIG_DIR, load_config


def test_real_size_cache_geometry_matches_official():
    """SD1.5 at 512x512 (latent 64x64): 40 layers, 760,217,600 elements per denoising step."""
    unet = build_video_unet(load_config(SHIPPED_CONFIG_DIR / "unet")).to(torch.float16)
    cache = unet.new_cache(2, 64, 64)
    assert len(cache.layers) == 40
    assert cache.layers[0].shape == (2, 2, 4096, 16, 320)
    assert cache.layers[12].shape == (2, 2, 64, 16, 1280)
    assert cache.nbytes == 2 * 760_217_600 * 2 == unet.cache_bytes(2, 64, 64)


def test_window_validation():
    geo = [LayerGeometry(4, 8)]
    with pytest.raises(ValueError, match="exceeds the positional-encoding table"):
        KVCache.create(geo, 1, window=25, sinks=8)
    with pytest.raises(ValueError, match="larger than the number of sink frames"):
        KVCache.create(geo, 1, window=8, sinks=8)
    with pytest.raises(ValueError, match="num_steps"):
        KVCache.create(geo, 0)


def test_tables_follow_the_official_ring_buffer():
    cache = KVCache.create([LayerGeometry(1, 8)], 1)
    cache.mark_warm(0)
    for n in range(9):  # frames 8..16
        tab = cache.tables()
        assert tab.write_slot.tolist() == [8 + n % 8]
        cache.advance(tab)
    # after frame 16 (written at slot 8): sinks 0..7, slot 8 = newest (15), slots 9..15 = frames 9..15 (8..14)
    assert tab.key_pos[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 15, 8, 9, 10, 11, 12, 13, 14]
    assert tab.query_pos.tolist() == [15]
    assert tab.mask.all()


def test_clone_to_reset():
    unet = tiny_video_unet()
    cache = unet.new_cache(2, 8, 8)
    for t in cache.layers:
        t.normal_()
    cache.warm = [True, True]
    cache.filled = [3, 2]
    twin = cache.clone()
    twin.layers[0].zero_()
    twin.filled[0] = 0
    assert cache.layers[0].abs().sum() > 0 and cache.filled == [3, 2]
    half = cache.to(dtype=torch.float16)
    assert half.dtype == torch.float16 and half.nbytes * 2 == cache.nbytes and half.filled == [3, 2]
    ptr = cache.layers[0].data_ptr()
    cache.reset()
    assert cache.layers[0].data_ptr() == ptr and cache.layers[0].abs().sum() == 0
    assert cache.warm == [False, False] and cache.filled == [0, 0] and cache.calls == 0


@torch.no_grad()
def test_200_frame_stream_invariants():
    """Constant cache memory (no reallocation), bounded state, identical work per frame."""
    torch.manual_seed(0)
    unet = tiny_video_unet()
    text = torch.randn(1, 77, 32)
    engine = StreamEngine(unet, text, 8, 8, t_index_list=(30, 40), generator=torch.Generator().manual_seed(0))
    z = torch.randn(208, 4, 8, 8)
    engine.warmup(z[:8], z[:8])
    nbytes = engine.cache.nbytes
    ptrs = [t.data_ptr() for t in engine.cache.layers]
    flops = {}
    for i in range(8, 208):
        if i in (30, 200):
            with FlopCounterMode(display=False) as counter:
                engine.step(z[i:i + 1], z[i:i + 1])
            flops[i] = counter.get_total_flops()
        else:
            engine.step(z[i:i + 1], z[i:i + 1])
        assert engine.pending <= engine.num_steps - 1
        tab = engine.cache.tables()
        assert int(tab.mask.sum(dim=1).max()) <= engine.cache.window
    assert engine.cache.nbytes == nbytes
    assert [t.data_ptr() for t in engine.cache.layers] == ptrs
    assert engine.cache.filled == [200, 199]
    assert flops[30] == flops[200] > 0
    assert engine._x_buf.shape == (1, 4, 1, 8, 8)


def test_tables_live_in_static_buffers_and_snapshots_keep_them():
    """Every call's tables are written into the same device buffers (what a captured graph reads); a snapshot keeps a
    call's values."""
    cache = KVCache.create([LayerGeometry(1, 8)], 1)
    cache.mark_warm(0)
    first = cache.tables()
    snap = first.snapshot()
    cache.advance(first)
    second = cache.tables()
    assert second.write_slot.data_ptr() == first.write_slot.data_ptr()
    assert second.mask.data_ptr() == first.mask.data_ptr()
    assert snap.write_slot.tolist() == [8] and second.write_slot.tolist() == [9] == first.write_slot.tolist()
    assert first.host_write_slot == (8,) and second.host_write_slot == (9,)
