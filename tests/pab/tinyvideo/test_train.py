"""The training script reproduces a run from its seed, resumes exactly, and exports a loadable pipeline."""

import torch

from pab.runtime.tinyvideo.pipeline import TinyVideoPipeline
from pab.runtime.tinyvideo.train import main

TINY = ["--hidden", "32", "--layers", "1", "--batch", "4", "--warmup", "2", "--eval-every", "1000"]


def _weights(path):
    state = torch.load(path / "last.pt", weights_only=False)
    return state["step"], state["ema_model"]


def test_seeded_run_and_resume_are_identical(tmp_path):
    main(["--out", str(tmp_path / "a"), "--steps", "4", *TINY])
    main(["--out", str(tmp_path / "b"), "--steps", "2", *TINY])
    main(["--out", str(tmp_path / "b"), "--steps", "4", *TINY])  # resumes from b/last.pt at step 2
    step_a, a = _weights(tmp_path / "a")
    step_b, b = _weights(tmp_path / "b")
    assert step_a == step_b == 4
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    main(["--out", str(tmp_path / "c"), "--steps", "2", "--seed", "1", *TINY])
    _, c = _weights(tmp_path / "c")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_export_loads_with_from_pretrained(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    main(["--out", str(tmp_path / "run"), "--steps", "1", *TINY])
    main(["--out", str(tmp_path / "run"), "--export", str(tmp_path / "w"), "--checkpoint", str(tmp_path / "run/last.pt")])
    pipe = TinyVideoPipeline.from_pretrained(str(tmp_path / "w"))
    state = torch.load(tmp_path / "run/last.pt", weights_only=False)["ema_model"]
    for k, v in pipe.transformer.state_dict().items():
        torch.testing.assert_close(v, state[k])  # the EMA weights, not the raw ones
    assert pipe.transformer.config.num_layers == 1 and pipe.scheduler.config.prediction_type == "v_prediction"
    from PIL import Image

    sheet = Image.open(tmp_path / "w" / "samples_held_out.png")  # 8 held-out captions x 4 frames of 16x16, 4x, 2 px gaps
    assert sheet.size == (4 * (4 * 16 + 3 * 2), 4 * (8 * 16 + 7 * 2))


def test_high_timestep_fraction_draws_that_share_of_the_batch_from_the_high_range():
    from pab.runtime.tinyvideo.train import sample_timesteps

    torch.manual_seed(0)
    t = sample_timesteps(16, 1000, high_fraction=0.5, high_min=700)
    assert t.shape == (16,) and bool((t[:8] >= 700).all()) and bool((t >= 0).all() and (t < 1000).all())
    torch.manual_seed(0)
    uniform = sample_timesteps(16, 1000)
    torch.manual_seed(0)
    assert torch.equal(uniform, torch.randint(0, 1000, (16,)))  # fraction 0: the original recipe, draw for draw
