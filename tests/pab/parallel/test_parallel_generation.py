"""A generation split over 2 and 4 CPU processes (gloo) equals the single-process generation, and every rank sends
exactly the bytes the broadcast schedule predicts; broadcast steps issue no collective at all.

Ranks are spawned once per world size and run all their cases in one group. Run inside the loopback namespace:
    ../shared/bin/loopback-only .venv/bin/python -m pytest tests/pab/parallel
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pab.parallel.launch import RankOutcome, run_ranks

from .workers import BATCH_INVARIANT_MODELS, GENERATOR_MODELS, Case, fail_mid_generation, generate, run_cases, video_generator

pytestmark = pytest.mark.slow  # one ~30 s process start-up and run per world size, shared by all tests here

CASES = {
    2: [
        Case("latte", 2, 1, "dsp", "none"),
        Case("latte", 2, 1, "dsp", "PAB-246"),
        Case("latte", 1, 2, "auto", "PAB-246"),
        Case("cogvideox", 2, 1, "auto", "none"),
        Case("cogvideox", 1, 2, "auto", "none"),
        Case("cogvideox", 2, 1, "auto", "PAB-246", size=24),  # 27 video tokens: padded to 28, padding masked
        Case("wan", 2, 1, "auto", "PAB-246"),
        Case("wan", 1, 2, "auto", "PAB-246"),
        Case("wan", 1, 2, "auto", "PAB-246", guidance=1.0),
        Case("wan22", 2, 1, "auto", "PAB-246"),  # both experts split; each counts its own steps
        Case("wan22", 1, 2, "auto", "PAB-246"),
        Case("ltx-video", 2, 1, "auto", "PAB-246"),
        Case("ltx-video", 1, 2, "auto", "PAB-246"),
        Case("allegro", 1, 2, "auto", "PAB-246"),  # no sequence split for Allegro and Mochi: CFG parallel only
        Case("mochi", 1, 2, "auto", "PAB-246"),  # the hooks read Mochi's rising timesteps back (test_models)
        # image-to-video: the I2V transformers' extra inputs (Wan's image tokens and 12 channels, CogVideoX's 8,
        # LTX-Video's per-token timestep) split with the video or stay whole, and the bytes are the schedule's
        Case("wan-i2v", 2, 1, "auto", "PAB-246"),
        Case("wan-i2v", 1, 2, "auto", "PAB-246"),
        Case("cogvideox-i2v", 2, 1, "auto", "PAB-246"),
        Case("cogvideox-i2v", 1, 2, "auto", "PAB-246"),
        Case("ltx-i2v", 2, 1, "auto", "PAB-246"),
        Case("ltx-i2v", 1, 2, "auto", "PAB-246"),
    ],
    4: [
        Case("latte", 4, 1, "dsp", "PAB-246"),
        Case("latte", 2, 2, "dsp", "PAB-246"),
        Case("latte", 4, 1, "ulysses", "PAB-246"),
        Case("cogvideox", 2, 2, "auto", "PAB-246"),
        Case("cogvideox", 4, 1, "auto", "none", size=24),
        Case("wan", 2, 2, "auto", "PAB-246"),
        Case("wan", 4, 1, "auto", "none"),
        Case("wan22", 2, 2, "auto", "PAB-246"),
        Case("ltx-video", 2, 2, "auto", "PAB-246"),
        Case("ltx-video", 4, 1, "auto", "none"),
        Case("ltx-i2v", 2, 2, "auto", "PAB-246"),
        Case("wan-i2v", 4, 1, "auto", "PAB-246"),
    ],
}
ALL = [(world, case) for world, cases in CASES.items() for case in cases]
IDS = [f"{w}ranks-{c.name}" for w, c in ALL]
COUNTED = ALL


@pytest.fixture(scope="module")
def outcomes() -> dict[int, list[RankOutcome]]:
    results = {world: run_ranks(run_cases, world, cases, world == 2, timeout_s=60) for world, cases in CASES.items()}
    for world, ranks in results.items():
        failed = [o for o in ranks if not o.ok]
        assert not failed, f"{world} ranks: " + "\n".join(f"rank {o.rank}: {o.error}" for o in failed)
    return results


@pytest.fixture(scope="module")
def references() -> dict[tuple[str, str, float], np.ndarray]:
    return {}


def _reference(refs: dict[Any, np.ndarray], case: Case) -> np.ndarray:
    key = (case.model, case.pab, case.guidance, case.size)
    if key not in refs:
        refs[key] = generate(Case(case.model, 1, 1, "auto", case.pab, case.guidance, case.size), parallel=False)["video"]
    return refs[key]


@pytest.mark.parametrize("world,case", ALL, ids=IDS)
def test_parallel_output_equals_single_process(outcomes, references, world: int, case: Case) -> None:
    expected = _reference(references, case)
    for o in outcomes[world]:
        got = o.value[case.name]["video"]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4, err_msg=f"rank {o.rank}")


@pytest.mark.parametrize("world,case", COUNTED, ids=IDS)
def test_counted_collectives_equal_schedule(outcomes, world: int, case: Case) -> None:
    for o in outcomes[world]:
        r = o.value[case.name]
        assert r["issued"] == r["predicted_issued"], f"rank {o.rank}"
        assert r["skipped"] == r["predicted_skipped"], f"rank {o.rank}"
        assert r["steps"] == r["predicted_steps"], f"rank {o.rank}: per-step issued calls"
        if case.pab != "none" and (case.sp > 1):
            assert r["skipped"], "PAB broadcast some attention, so some collectives must have been skipped"
        if case.pab == "none":
            assert not r["skipped"]


@pytest.mark.parametrize("world,case", [(w, c) for w, c in ALL if c.pab != "none" and c.sp > 1],
                         ids=[f"{w}ranks-{c.name}" for w, c in ALL if c.pab != "none" and c.sp > 1])
def test_broadcast_steps_issue_no_collective(outcomes, world: int, case: Case) -> None:
    """Between two step ends, a kind whose modules were all broadcast adds zero issued calls; others add some."""
    r = outcomes[world][0].value[case.name]
    steps = [{k: 0 for k in r["steps"][0]}] + r["steps"]
    quiet = 0
    for before, after, predicted_before, predicted_after in zip(
        steps, steps[1:], [{k: 0 for k in r["steps"][0]}] + r["predicted_steps"], r["predicted_steps"]
    ):
        for kind in ("spatial", "temporal", "cross"):
            delta = after[kind] - before[kind]
            assert delta == predicted_after[kind] - predicted_before[kind]
            quiet += delta == 0 and any(k == kind for k, _ in r["predicted_issued"])
    assert quiet > 0, "no step broadcast a communicating kind: the schedule exercised nothing"


ERRORS = {
    "latte_odd_frames": ("ParallelConfigError", "num_frames", "latent frames = 7 is not divisible by sp_degree = 2"),
    "latte_one_frame_per_rank": ("ParallelConfigError", "sp_degree", "1 frame per rank"),
    "ulysses_heads": ("ParallelConfigError", "sp_degree", "3 attention heads are not divisible by sp_degree=2"),
    "wan_request": ("ParallelConfigError", "num_frames", "video tokens (latent frames x tokens per frame) = 27"),
    "generator_request": ("GenerationParamsError", "num_frames", "latent frames = 1 is not divisible by sp_degree = 2"),
    "wan_forward": ("ParallelConfigError", "num_frames", "= 9 is not divisible by sp_degree = 2"),
    "cogvideox_dsp": ("ParallelConfigError", "strategy", "use strategy='ulysses'"),
    "wan_cfg_without_pipeline": ("ParallelConfigError", "cfg_degree", "pass the pipeline"),
    "world_mismatch": ("ParallelConfigError", "sp_degree", "must equal the process group's world size 2"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_unsplittable_shapes_raise_clear_errors_on_every_rank(outcomes, name: str) -> None:
    kind, field, text = ERRORS[name]
    for o in outcomes[2]:
        got_kind, got_field, message = o.value["errors"][name]
        assert (got_kind, got_field) == (kind, field), message
        assert text in message


def test_valid_request_passes_validation(outcomes) -> None:
    assert all(o.value["errors"]["wan_request_ok"][0] == "no error" for o in outcomes[2])


@pytest.mark.parametrize("model", sorted(GENERATOR_MODELS))
def test_video_generator_parallel_equals_single_process(outcomes, model: str) -> None:
    """The serving front door (VideoGenerator, PAB-246, sp_degree=2): same frames and broadcast decisions as one
    process, and every collective it reports is the schedule's prediction, byte for byte."""
    expected = video_generator(model, None)
    attention = {"latte": "temporal"}.get(model, "spatial")  # the kind whose modules communicate
    for o in outcomes[2]:
        got = o.value["generator"][model]
        # uint8 frames after the VAE: fp32 reductions in another order may move a value across a rounding edge
        assert np.abs(got["frames"].astype(int) - expected["frames"].astype(int)).max() <= 1
        comm = got["stats"]["comm"]
        assert comm["issued"][attention]["all_to_all"]["calls"] > 0 and comm["skipped_bytes"] > 0
        assert comm == got["predicted_comm"], f"rank {o.rank}"
        assert got["stats"]["kinds"] == expected["stats"]["kinds"], "same broadcast decisions as one process"


@pytest.mark.parametrize("model", BATCH_INVARIANT_MODELS)
def test_batch_invariant_generator_splits_like_the_plain_one(outcomes, model: str) -> None:
    """`batch_invariant=True` (the serving workers' setting) with diffusers' context parallel: the same frames as
    the plain parallel run and the schedule's bytes (it used to drop the plan's output gather: a shape error)."""
    for o in outcomes[2]:
        got, plain = o.value["batch_invariant"][model], o.value["generator"][model]
        assert np.abs(got["frames"].astype(int) - plain["frames"].astype(int)).max() <= 1
        assert got["stats"]["comm"] == got["predicted_comm"] == plain["stats"]["comm"], f"rank {o.rank}"
        assert got["stats"]["kinds"] == plain["stats"]["kinds"]


def test_failed_rank_makes_peers_fail_fast() -> None:
    hold_s = 8.0
    ranks = run_ranks(fail_mid_generation, 2, 1, hold_s, timeout_s=hold_s / 4, join_timeout_s=120)
    healthy, failed = ranks
    assert not failed.ok and "injected failure" in failed.error
    assert not healthy.ok, "the healthy rank must raise, not finish"
    assert "injected failure" not in healthy.error
    assert "timed out" in healthy.error.lower(), healthy.error  # the group's own timeout, not a harness kill
    # It raised on the group timeout while the failed rank was still alive (that one reports after hold_s).
    assert healthy.arrival < failed.arrival
