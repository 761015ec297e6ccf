"""The tiny model's text encoder and pipeline: diffusers save/load offline, VideoGenerator drives it, PAB hooks it."""

import numpy as np
import pytest
import torch

from pab.runtime.pipelines import GenerationParams, VideoGenerator
from pab.runtime.tinyvideo.pipeline import TinyVideoPipeline, random_tiny_shapes
from pab.runtime.tinyvideo.sampling import sample
from pab.runtime.tinyvideo.text_encoder import WordEmbeddingTextEncoder


def test_tokenize_unknown_and_padding():
    enc = WordEmbeddingTextEncoder()
    ids = enc.tokenize(["a red square moving left", "a purple cat", ""])
    assert ids.shape == (3, 6)
    assert ids[0, :5].tolist() == [enc.index[w] for w in "a red square moving left".split()]
    assert ids[1, 1:3].tolist() == [1, 1]  # purple, cat -> <unk>
    assert ids[2].tolist() == [0] * 6  # the empty caption is all padding: the CFG null condition
    assert enc.unknown_words("a Purple cat") == ["purple", "cat"]


def test_save_load_offline_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = random_tiny_shapes(3)
    pipe.save_pretrained(tmp_path)
    again = TinyVideoPipeline.from_pretrained(str(tmp_path))
    kw = dict(num_inference_steps=3, output_type="np")
    a = pipe("a red disc moving up", generator=torch.Generator().manual_seed(1), **kw).frames
    b = again("a red disc moving up", generator=torch.Generator().manual_seed(1), **kw).frames
    assert a.shape == (1, 4, 16, 16, 3)
    np.testing.assert_array_equal(a, b)


def test_pipeline_matches_sampler_and_depends_on_seed():
    pipe = random_tiny_shapes(0)
    out = pipe("a blue square moving down", generator=torch.Generator().manual_seed(7), num_inference_steps=4,
               output_type="pt").frames
    ref = sample(pipe.transformer, pipe.text_encoder, pipe.scheduler, ["a blue square moving down"], [7], num_steps=4)
    torch.testing.assert_close(out[0], (ref[0].permute(1, 2, 3, 0) + 1) / 2)
    other = pipe("a blue square moving down", generator=torch.Generator().manual_seed(8), num_inference_steps=4,
                 output_type="pt").frames
    assert not torch.equal(out, other)


def test_sizes_frames_fixed_height_width_multiples_of_the_patch():
    pipe = random_tiny_shapes(0)
    with pytest.raises(ValueError, match="num_frames must be 4"):
        pipe("a red disc moving up", num_frames=8, num_inference_steps=1)
    with pytest.raises(ValueError, match="height must be a positive multiple of the patch size 4"):
        pipe("a red disc moving up", height=18, num_inference_steps=1)
    assert pipe("a red disc moving up", height=32, width=8, num_inference_steps=1).frames.shape == (1, 4, 32, 8, 3)


def test_video_generator_with_pab_counts_two_cfg_passes():
    gen = VideoGenerator(random_tiny_shapes(0), pab="PAB-246")
    params = GenerationParams(prompt="a red disc moving up", seed=1, num_inference_steps=6, guidance_scale=3.0)
    result = gen.generate(params)
    assert result.frames.shape == (4, 16, 16, 3) and result.frames.dtype == np.uint8
    kinds = result.stats.pab.model_dump()["kinds"]
    # 2 layers x 6 steps x 2 CFG passes (cond and uncond run as separate forwards, each with its own cache)
    assert kinds["spatial"]["calls"] == kinds["temporal"]["calls"] == kinds["cross"]["calls"] == 24
    assert kinds["spatial"]["broadcast"] > 0
    full = gen.generate(params, pab="none")
    assert full.stats.pab.attention.broadcast == 0
    plain = VideoGenerator(random_tiny_shapes(0)).generate(params)
    np.testing.assert_array_equal(full.frames, plain.frames)  # PAB "none" is bit-identical to no PAB
