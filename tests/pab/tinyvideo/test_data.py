"""The procedural clip generator: deterministic per seed, and every caption describes its clip."""

import pytest
import torch

from pab.runtime.tinyvideo.objective import objective_check
from pab.runtime.tinyvideo.data import (
    COLOURS, DIRECTIONS, HELD_OUT, SHAPES, all_combinations, caption, make_batch, parse_caption, render_clip, render_clips,
    sample_start, train_combinations,
)


def test_same_seed_same_batch_other_seed_other_batch():
    a, caps_a = make_batch(8, torch.Generator().manual_seed(5))
    b, caps_b = make_batch(8, torch.Generator().manual_seed(5))
    c, caps_c = make_batch(8, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and caps_a == caps_b
    assert not torch.equal(a, c)
    assert a.shape == (8, 3, 4, 16, 16) and a.min() >= -1 and a.max() <= 1


@pytest.mark.parametrize("combo", all_combinations())
def test_caption_matches_clip(combo):
    """The objective check reads back the caption's colour, shape and direction from the rendered pixels."""
    g = torch.Generator().manual_seed(hash(combo) % 1000)
    clip = render_clip(*combo, sample_start(combo[2], g))
    frames = (clip.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    result = objective_check(frames, combo)
    assert (result.colour, result.shape, result.direction) == combo
    assert parse_caption(caption(*combo)) == combo


def test_batch_captions_describe_their_clips():
    clips, caps = make_batch(12, torch.Generator().manual_seed(0))
    for clip, text in zip(clips, caps):
        frames = ((clip.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8)
        r = objective_check(frames, parse_caption(text))
        assert r.ok and r.shape_ok, (text, r)


def test_shapes_stay_inside_the_frame():
    g = torch.Generator().manual_seed(1)
    combos = [("red", "square", d) for d in DIRECTIONS for _ in range(20)]
    starts = torch.tensor([sample_start(c[2], g) for c in combos])
    area = render_clips(combos, starts)[:, :, 0].sum(dim=(2, 3))
    assert torch.allclose(area, torch.full_like(area, 36.0), atol=1e-4)  # the 6x6 square is never clipped


def test_batch_and_single_rendering_agree():
    starts = torch.tensor([[5.0, 7.5], [9.25, 4.0]])
    combos = [("blue", "disc", "left"), ("yellow", "triangle", "down")]
    both = render_clips(combos, starts)
    for i, combo in enumerate(combos):
        assert torch.equal(both[i], render_clip(*combo, tuple(starts[i].tolist())))


def test_held_out_split():
    train = set(train_combinations())
    assert not train & set(HELD_OUT)
    assert len(train) + len(HELD_OUT) == len(COLOURS) * len(SHAPES) * len(DIRECTIONS)
    for i, names in enumerate((COLOURS, SHAPES, DIRECTIONS)):
        assert {c[i] for c in HELD_OUT} == set(names)  # every word is tested, in combinations never trained


def test_parse_caption_names_what_is_missing():
    with pytest.raises(ValueError, match="direction"):
        parse_caption("a red square")
    with pytest.raises(ValueError, match="colour"):
        parse_caption("a red blue square moving up")
