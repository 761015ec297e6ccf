"""The PAB checks every supported transformer family runs, in diffusers' `*TesterMixin` style.

A family's test class (tests/pab/test_models.py) says how to build its tiny real-architecture transformer, how its
pipeline calls it (inputs, CFG passes), and how many modules of each kind its adapter must find; the mixin then checks
on that transformer:
- PAB off (preset "none", and every range 1) is bit-identical to the unhooked model;
- per kind, computed/broadcast counts equal the closed form of the paper's rule (`step % range != 0 and lo < t < hi`
  per module, the MLP anchor rule for MLPs), and a second generation counts from scratch;
- each CFG pass the pipeline runs keeps its own cache (a broadcast never returns another pass's output);
- `remove()` restores the model: same module tree, weights and outputs, and PAB can be applied again.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from pab import BroadcastRule, MLPBroadcastRule, PABConfig, apply_pab, get_preset
from pab.adapters import adapter_for, pipeline_transformers
from pab.config import ATTENTION_KINDS, TIMESTEP_SCALE
from pab.hooks import BROADCAST_HOOK, ROOT_HOOK
from pab.runtime.models.registry import RANDOM_MODELS
from pab.runtime.pipelines import VideoGenerator, load_pipeline, to_uint8
from pab.runtime.pipelines.generator import BATCH_VARIANT_PIPELINES, _call_kwargs
from pab.runtime.request.conditioning import ReferenceImage
from pab.runtime.request.params import RequestError
from pab.runtime.request.request import GenerationRequest

STEPS = 30

RULE_CONFIGS = {
    # windows clipping the schedule at both ends, different per kind
    "clipped-windows": PABConfig(
        spatial=BroadcastRule(2, (300, 700)), temporal=BroadcastRule(3, (150, 950)), cross=BroadcastRule(5, (0, 1000))
    ),
    "PAB-246+mlp": get_preset("PAB-246+mlp", model="latte"),
    "temporal-only+mlp": PABConfig(
        temporal=BroadcastRule(4, (50, 990)), mlp=MLPBroadcastRule(blocks=(1,), timesteps=(800, 450), range=3)
    ),
}
EVERY_KIND = PABConfig(spatial=BroadcastRule(2, (0, 1000)), temporal=BroadcastRule(3, (0, 1000)),
                       cross=BroadcastRule(3, (0, 1000)), name="every-kind")


def expected_attention_broadcasts(timesteps: list[float], rule: BroadcastRule | None) -> int:
    """Broadcasts of ONE module per PAPER.md: reuse iff step_counter % range != 0 and lo < t < hi."""
    if rule is None:
        return 0
    lo, hi = rule.window
    return sum(1 for counter, t in enumerate(timesteps) if counter % rule.range != 0 and lo < t < hi)


def expected_mlp_broadcasts(timesteps: list[float], rule: MLPBroadcastRule | None) -> int:
    """Broadcasts of ONE MLP in a listed block: a step crossing an anchor computes, the next range-1 steps reuse."""
    if rule is None:
        return 0
    reused, left, previous = 0, 0, float("inf")
    for t in timesteps:
        if any(previous > anchor >= t for anchor in rule.timesteps):
            left = rule.range - 1
        elif left > 0:
            reused, left = reused + 1, left - 1
        previous = t
    return reused


def expected_counts(handle: Any, timesteps: list[float], config: PABConfig, passes: int = 1) -> dict[str, tuple]:
    """Per kind (calls, broadcast) the rule gives for this handle's modules over `timesteps`, per pass summed."""
    out = {}
    for kind in (*ATTENTION_KINDS, "mlp"):
        modules = [block for k, block in handle.modules.values() if k == kind]
        if kind == "mlp":
            listed = sum(1 for b in modules if config.mlp is not None and b in config.mlp.blocks)
            broadcast = listed * expected_mlp_broadcasts(timesteps, config.mlp)
        else:
            broadcast = len(modules) * expected_attention_broadcasts(timesteps, config.rule_for(kind))
        out[kind] = (passes * len(modules) * len(timesteps), passes * broadcast)
    return out


def noise_levels(steps: int = STEPS) -> list[float]:
    """A DDIM schedule on the 0..1000 noise scale (999 down to a few)."""
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    return [float(t) for t in scheduler.timesteps]


class PABModelTesterMixin:
    """Mix into a class that defines the attributes below; every test here runs for every family."""

    build_transformer: Callable[..., torch.nn.Module]
    expected_modules: dict[str, int]
    """Modules per kind (spatial, temporal, cross, mlp) the adapter must classify in the tiny transformer."""
    cfg_contexts: tuple[str | None, ...] = (None,)
    """The `cache_context` names the family's pipeline calls the transformer under in one step, in order (None: no
    context). Two names mean two-pass CFG (cond, uncond); one means the CFG batch goes through one forward."""

    def make_inputs(self, batch: int, text_seed: int) -> dict[str, Any]:
        """Forward kwargs except `timestep`, deterministic in `text_seed` (latents fixed per family)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ helpers

    @property
    def two_pass(self) -> bool:
        return len(self.cfg_contexts) == 2

    def transformer(self) -> torch.nn.Module:
        return self.build_transformer(seed=0)

    def pass_inputs(self) -> list[dict[str, Any]]:
        """The inputs of each forward of one step: cond then uncond for two-pass, one [uncond; cond] batch else."""
        if self.two_pass:
            return [self.make_inputs(1, text_seed=1), self.make_inputs(1, text_seed=2)]
        return [self.make_inputs(2, text_seed=1)]

    def timestep_input(self, inputs: dict[str, Any], batch: int, t: float) -> torch.Tensor:
        """The `timestep` argument the family's pipeline passes at timestep `t`: one per sample (LTX-Video's
        image-to-video passes one per token, 0 on the reference frame's)."""
        return torch.full((batch,), t)

    def forward(self, transformer: torch.nn.Module, inputs: dict[str, Any], noise: float,
                context: str | None) -> torch.Tensor:
        """One forward at noise level `noise`, with the timestep in the transformer's own convention."""
        batch = next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape[0]
        t = TIMESTEP_SCALE - noise if adapter_for(transformer).timestep_reversed else noise
        kwargs = {**inputs, "timestep": self.timestep_input(inputs, batch, t)}
        with torch.no_grad():
            if context is None:
                return transformer(**kwargs, return_dict=False)[0]
            with transformer.cache_context(context):
                return transformer(**kwargs, return_dict=False)[0]

    def generation(self, transformer: torch.nn.Module, timesteps: list[float],
                   contexts: tuple[str | None, ...] | None = None) -> list[torch.Tensor]:
        """Every forward output of one generation, driven the way the family's pipeline drives it."""
        contexts = self.cfg_contexts if contexts is None else contexts
        inputs = self.pass_inputs()
        outputs = []
        for t in timesteps:
            for self.current_pass, (x, c) in enumerate(zip(inputs, contexts)):
                outputs.append(self.forward(transformer, x, t, c))
            self.current_step += 1
        return outputs

    current_pass = current_step = 0  # where `generation` is, for recording hooks

    def assert_same(self, got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
        assert len(got) == len(expected)
        for i, (a, b) in enumerate(zip(got, expected)):
            assert torch.equal(a, b), f"forward {i} differs"

    def assert_counts(self, handle: Any, expected: dict[str, tuple]) -> None:
        for kind, (calls, broadcast) in expected.items():
            counts = handle.stats.kinds[kind]
            assert (counts.calls, counts.broadcast) == (calls, broadcast), kind
            assert counts.computed == calls - broadcast, kind

    # -------------------------------------------------------------------------------------------------- tests

    def test_pab_off_is_bit_identical(self) -> None:
        transformer, timesteps = self.transformer(), noise_levels(6)
        reference = self.generation(transformer, timesteps)
        handle = apply_pab(transformer, PABConfig.disabled())
        self.assert_same(self.generation(transformer, timesteps), reference)
        assert handle.stats.attention.broadcast == 0 and handle.stats.kinds["mlp"].broadcast == 0
        assert handle.stats.attention.calls == len(timesteps) * len(self.cfg_contexts) * sum(
            n for k, n in self.expected_modules.items() if k != "mlp")
        ones = BroadcastRule(range=1, window=(0, 1000))
        handle.configure(PABConfig(spatial=ones, temporal=ones, cross=ones, mlp=MLPBroadcastRule((0, 1), (900, 500), 1)))
        self.assert_same(self.generation(transformer, timesteps), reference)
        assert handle.stats.attention.broadcast == 0
        handle.remove()
        self.assert_same(self.generation(transformer, timesteps), reference)

    @pytest.mark.parametrize("config_name", sorted(RULE_CONFIGS))
    def test_rule_counts_per_kind(self, config_name: str) -> None:
        config = RULE_CONFIGS[config_name]
        transformer, timesteps = self.transformer(), noise_levels()
        handle = apply_pab(transformer, config)
        found = {k: sum(1 for kind, _ in handle.modules.values() if kind == k) for k in (*ATTENTION_KINDS, "mlp")}
        assert found == {k: self.expected_modules.get(k, 0) for k in found}, "the adapter's patterns"
        expected = expected_counts(handle, timesteps, config, passes=len(self.cfg_contexts))
        for _ in range(2):  # the second generation must count from scratch (the noise level goes up again)
            self.generation(transformer, timesteps)
            assert handle.stats.forwards == len(timesteps) * len(self.cfg_contexts)
            self.assert_counts(handle, expected)
        if config.mlp is not None and self.expected_modules.get("mlp"):
            assert handle.stats.kinds["mlp"].broadcast > 0  # the MLP rule was exercised, not vacuously zero

    def test_cfg_passes_keep_their_own_cache(self) -> None:
        transformer, timesteps = self.transformer(), noise_levels(8)
        handle = apply_pab(transformer, EVERY_KIND)
        calls = _record_attention_outputs(transformer, handle, lambda: (self.current_step, self.current_pass))
        outputs = self.generation(transformer, timesteps)
        # the hooks took the pipeline's pass names (cache_context), one per pass it runs
        assert {branch for _, branch, _, _ in calls} == {c or "default" for c in self.cfg_contexts}
        broadcasts = _check_reuse_stays_in_its_pass(calls)
        assert broadcasts == handle.stats.attention.broadcast > 0
        if self.two_pass:  # the text differs per pass, so must every cross attention, broadcast or not
            cross = {(step, p, name): out for (step, p), _, name, out in calls if handle.modules[name][0] == "cross"}
            for (step, p, name), out in cross.items():
                if p == 0:
                    assert not torch.equal(out, cross[(step, 1, name)]), f"{name} at step {step}"
        self.assert_counts(handle, expected_counts(handle, timesteps, EVERY_KIND, passes=len(self.cfg_contexts)))
        pairs = zip(outputs[::2], outputs[1::2]) if self.two_pass else (out.chunk(2) for out in outputs)
        for cond, uncond in pairs:  # per step: the uncond result is its own, also where attention was broadcast
            assert not torch.equal(cond, uncond), "the uncond pass returned the cond pass's result"
        if self.two_pass:
            # A pipeline that names no pass: the n-th call at a timestep is the n-th pass, still one cache each.
            handle.reset()
            unnamed = self.generation(transformer, timesteps, contexts=(None, None))
            self.assert_counts(handle, expected_counts(handle, timesteps, EVERY_KIND, passes=2))
            self.assert_same(unnamed, outputs)

    def test_remove_restores_model(self) -> None:
        transformer, timesteps = self.transformer(), noise_levels(6)
        tree = [(name, type(module)) for name, module in transformer.named_modules()]
        forwards = {name: module.forward for name, module in transformer.named_modules()}
        weights = {k: v.clone() for k, v in transformer.state_dict().items()}
        reference = self.generation(transformer, timesteps)
        handle = apply_pab(transformer, EVERY_KIND)
        self.generation(transformer, timesteps)
        assert handle.stats.attention.broadcast > 0  # PAB really ran before it was removed
        handle.remove()
        assert [(name, type(module)) for name, module in transformer.named_modules()] == tree
        assert all(not _has_pab_hook(module) for module in transformer.modules())
        assert all(module.forward == forwards[name] for name, module in transformer.named_modules())
        assert not hasattr(transformer, "_pab_handle")
        state = transformer.state_dict()
        assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)
        self.assert_same(self.generation(transformer, timesteps), reference)
        again = apply_pab(transformer, PABConfig.disabled())  # a removed model takes PAB again
        self.assert_same(self.generation(transformer, timesteps), reference)
        again.remove()


def _has_pab_hook(module: torch.nn.Module) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and any(name in registry.hooks for name in (ROOT_HOOK, BROADCAST_HOOK))


Where = tuple[int, int]  # (step, pass) the test is driving


def _record_attention_outputs(transformer: torch.nn.Module, handle: Any,
                              where: Callable[[], Where]) -> list[tuple[Where, str, str, Any]]:
    """((step, pass) driven, pass name the hooks took, module, output) of every call of every classified attention
    module, computed or broadcast."""
    calls: list[tuple[Where, str, str, Any]] = []
    for name, module in transformer.named_modules():
        if handle.modules.get(name, ("", 0))[0] in ATTENTION_KINDS:
            module.register_forward_hook(
                lambda mod, args, out, name=name: calls.append((where(), handle._state.branch, name, out)))
    return calls


def _check_reuse_stays_in_its_pass(calls: list[tuple[Where, str, str, Any]]) -> int:
    """A module's output that is the very object it returned before is a broadcast: it must be that module's last
    computed output in the same pass, never one computed in another pass. Returns the number of broadcasts seen."""
    last: dict[tuple[int, str], Any] = {}
    broadcasts = 0
    for (_, driven), _, name, out in calls:
        if last.get((driven, name)) is out:
            broadcasts += 1
        else:
            assert all(out is not v for (p, _), v in last.items() if p != driven), f"{name} in pass {driven} reused another pass"
            last[(driven, name)] = out
    return broadcasts


class PABPipelineTesterMixin:
    """The same rule, end to end: a family's tiny pipeline (`model`, a `RANDOM_MODELS` name) through `VideoGenerator`.

    The noise levels each expert transformer sees are recorded from its forward arguments, and the generator's stats
    must equal the closed form for them, per kind, per CFG pass and per expert (Wan 2.2: each expert's modules count
    their own steps from 0).
    """

    model: str
    steps: int = 10
    image_to_video: bool = False
    """The pipeline takes a reference image: every request here carries one (`input_reference`)."""

    def params(self, **overrides: Any) -> GenerationRequest:
        fields = {"prompt": "a red car drives fast", "seed": 3, "num_inference_steps": self.steps, **overrides}
        if self.image_to_video:
            defaults = RANDOM_MODELS[self.model]
            fields.setdefault("input_reference", reference_image(defaults.width, defaults.height, seed=fields["seed"]))
        return GenerationRequest(**fields)

    def test_generator_counts_follow_the_rule(self) -> None:
        config = RULE_CONFIGS["PAB-246+mlp"]
        gen = VideoGenerator(load_pipeline(self.model), config)
        experts = [t for _, t in pipeline_transformers(gen.pipeline)]
        seen: dict[int, list[float]] = {i: [] for i in range(len(experts))}
        for i, transformer in enumerate(experts):
            reversed_ = adapter_for(transformer).timestep_reversed
            transformer.register_forward_pre_hook(lambda m, a, k, i=i, r=reversed_: seen[i].append(
                TIMESTEP_SCALE - float(k["timestep"].max()) if r else float(k["timestep"].max())), with_kwargs=True)
        stats = gen.generate(self.params()).stats.pab.model_dump()
        assert len(gen.pab_handles) == len(experts) and all(seen.values()), "every expert hooked and used"
        expected = {kind: [0, 0] for kind in (*ATTENTION_KINDS, "mlp")}
        for i, handle in enumerate(gen.pab_handles):
            timesteps = sorted(set(seen[i]), key=seen[i].index)  # one entry per step, whatever the passes
            passes = len(seen[i]) // len(timesteps)
            for kind, (calls, broadcast) in expected_counts(handle, timesteps, config, passes).items():
                expected[kind][0] += calls
                expected[kind][1] += broadcast
        got = {kind: [counts["calls"], counts["broadcast"]] for kind, counts in stats["kinds"].items()}
        assert got == expected
        assert all(c["calls"] == c["computed"] + c["broadcast"] for c in stats["kinds"].values())
        assert 0 < stats["kinds"]["spatial"]["broadcast"] < stats["kinds"]["spatial"]["calls"]
        assert stats["forwards"] == sum(len(v) for v in seen.values()) and stats["preset"] == config.name

    def test_generator_with_pab_none_equals_the_plain_pipeline(self) -> None:
        params = self.params(seed=5)
        gen = VideoGenerator(load_pipeline(self.model), "none")
        result = gen.generate(params)
        plain = load_pipeline(self.model)
        kwargs = _call_kwargs(plain, [result.request])  # one seeded generator (and reference image), as VideoGenerator
        assert ("image" in kwargs) == self.image_to_video
        frames = plain(**kwargs).frames[0]
        assert np.array_equal(result.frames, to_uint8(frames))
        assert result.stats.pab.attention.broadcast == 0 and result.stats.pab.attention.calls > 0

    def test_reference_image_conditions_the_video(self) -> None:
        """Image-to-video: another reference image gives another video (same prompt and seed), and a text-only
        family refuses one naming `input_reference`, before it runs."""
        gen = VideoGenerator(load_pipeline(self.model), "PAB-246")
        defaults = RANDOM_MODELS[self.model]
        other = reference_image(defaults.width, defaults.height, seed=99)
        if not self.image_to_video:
            with pytest.raises(RequestError, match="input_reference") as raised:
                gen.generate(self.params(input_reference=other))
            assert raised.value.field == "input_reference" and raised.value.status == 400
            return
        with pytest.raises(RequestError, match="needs one; send input_reference") as raised:
            gen.generate(self.params(input_reference=None))  # an image-to-video pipeline cannot start without it
        assert raised.value.field == "input_reference" and gen.card.reference_required
        first, second = gen.generate(self.params()), gen.generate(self.params(input_reference=other))
        assert gen.card.image_to_video and first.request.input_reference != second.request.input_reference
        assert first.frames.shape == second.frames.shape and not np.array_equal(first.frames, second.frames)
        assert first.stats.pab.model_dump()["kinds"] == second.stats.pab.model_dump()["kinds"]  # same schedule
        again = gen.generate(first.request)  # the resolved request, reference included, replays byte for byte
        assert np.array_equal(again.frames, first.frames)

    def test_image_to_video_batches_one_reference_per_sample(self) -> None:
        """Jobs with their own reference images share a denoising loop and each gets the video it gets alone
        (batch-invariant arithmetic, as the serving workers run); a pipeline that takes one image per call runs its
        jobs one at a time instead (the card says why)."""
        if not self.image_to_video:
            pytest.skip("text-to-video family")
        gen = VideoGenerator(load_pipeline(self.model), "PAB-246", batch_invariant=True)
        defaults = RANDOM_MODELS[self.model]
        requests = [gen.resolve_request(self.params(seed=seed, input_reference=reference_image(
            defaults.width, defaults.height, seed=seed))) for seed in (1, 2)]
        if type(gen.pipeline).__name__ in BATCH_VARIANT_PIPELINES:
            assert gen.card.batch_variance == BATCH_VARIANT_PIPELINES[type(gen.pipeline).__name__]
            with pytest.raises(ValueError, match="cannot batch requests"):
                gen.generate_batch(requests)
            return
        alone = [gen.generate(r).frames for r in requests]
        batched = gen.generate_batch(requests)
        assert batched[0].stats.batch_size == 2 and not np.array_equal(alone[0], alone[1])
        assert all(np.array_equal(a, b.frames) for a, b in zip(alone, batched))


def reference_image(width: int, height: int, seed: int) -> ReferenceImage:
    """A random RGB reference image of the request's size."""
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return ReferenceImage.from_rgb(rgb)
