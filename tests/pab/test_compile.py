"""PAB under torch.compile: no graph break, one graph per distinct broadcast combination, nothing recompiled step
after step or generation after generation, and the same outputs as eager. Graphs are counted with dynamo's own
counters; most tests use the "eager" backend (dynamo traces and guards exactly as for inductor, without codegen)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from torch._dynamo.utils import counters

from pab import apply_pab, get_preset
from pab.parallel import ParallelConfig
from pab.runtime.models.tiny import tiny_latte_transformer
from pab.runtime.pipelines import GenerationParams, VideoGenerator
from pab.runtime.pipelines.compile import CompileConfig, CompileConfigError, compile_generator
from pab.runtime.tinyvideo.pipeline import random_tiny_shapes


def _graphs() -> tuple[int, int]:
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def _timesteps(steps: int) -> list[float]:
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    return [float(t) for t in scheduler.timesteps]


def _generation(transformer, timesteps: list[float], batch: int = 1) -> list[torch.Tensor]:
    x = torch.randn(batch, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(batch, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return [transformer(x, timestep=torch.full((batch,), t), encoder_hidden_states=text, return_dict=False)[0]
                for t in timesteps]


def _distinct_plans(handle, timesteps: list[float]) -> int:
    """Distinct per-module broadcast decisions over one single-pass generation, replayed from the rules."""
    config = handle.config
    plans = set()
    for counter, t in enumerate(timesteps):
        plans.add(tuple(counter > 0 and config.rule_for(kind).broadcasts(counter, t)
                        for kind, _ in handle.modules.values() if kind != "mlp"))
    return len(plans)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("preset,steps,frozen", [("PAB-246", 30, False), ("PAB-357f", 20, False),
                                                 ("PAB-246", 30, True)])
def test_one_graph_per_distinct_plan_and_no_recompiles_across_steps_and_generations(preset, steps, frozen):
    """`frozen`: traced under inductor's `freezing` (what `options={"freezing": True}` sets while dynamo traces),
    which takes tensors read from module attributes for constants: the broadcast outputs must be graph inputs, or
    every step recompiles."""
    import torch._inductor.config as inductor_config

    transformer = tiny_latte_transformer(num_layers=2)
    eager_handle = apply_pab(transformer, get_preset(preset, model="latte"))
    timesteps = _timesteps(steps)
    eager = _generation(transformer, timesteps)
    eager_stats = eager_handle.stats.to_dict()
    eager_handle.compile(backend="eager", fullgraph=True)
    with inductor_config.patch(freezing=frozen):
        graphs0, breaks0 = _graphs()
        compiled = _generation(transformer, timesteps)
        graphs1, breaks1 = _graphs()
        expected = _distinct_plans(eager_handle, timesteps)
        assert breaks1 == breaks0
        assert graphs1 - graphs0 == expected
        assert 2 <= expected <= 9 < len(timesteps)  # a bounded set, not one graph per step
        compiled_again = _generation(transformer, timesteps)
        assert _graphs() == (graphs1, breaks1)  # a second generation compiles nothing
    for a, b, c in zip(eager, compiled, compiled_again):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
        torch.testing.assert_close(c, a, rtol=0, atol=1e-6)
    assert eager_handle.stats.to_dict() == eager_stats  # decisions and counts are the same compiled


def test_step_rule_under_compile_only_compiles_the_forwards_that_run():
    transformer = tiny_latte_transformer(num_layers=1)
    handle = apply_pab(transformer, get_preset("step3f", model="latte"))
    timesteps = _timesteps(12)
    eager = _generation(transformer, timesteps)
    handle.compile(backend="eager", fullgraph=True)
    graphs0, breaks0 = _graphs()
    compiled = _generation(transformer, timesteps)
    assert _graphs() == (graphs0 + 1, breaks0)  # no module rule: every forward that runs is the same graph
    assert handle.stats.step.broadcast > 0 and handle.stats.step.forecast > 0
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    handle.remove()
    assert not handle.compiled


@pytest.fixture
def guard_filter_calls(monkeypatch):
    """(guards dynamo offered, guards kept) for every graph compiled with guards="inputs"."""
    import pab.compiled

    calls: list[tuple[int, int]] = []
    drop = pab.compiled.drop_model_guards

    def recording(entries):
        keep = drop(entries)
        calls.append((len(keep), sum(keep)))
        return keep

    monkeypatch.setattr(pab.compiled, "drop_model_guards", recording)
    return calls


def test_input_guards_drop_the_model_guards_of_every_plan_and_compute_the_same(guard_filter_calls):
    transformer = tiny_latte_transformer(num_layers=2)
    handle = apply_pab(transformer, get_preset("PAB-246", model="latte"))
    timesteps = _timesteps(30)
    eager = _generation(transformer, timesteps)
    handle.compile(guards="inputs", backend="eager", fullgraph=True)
    graphs0, breaks0 = _graphs()
    compiled = _generation(transformer, timesteps)
    graphs1 = _graphs()[0]
    assert graphs1 - graphs0 == _distinct_plans(handle, timesteps) and _graphs()[1] == breaks0
    assert len(guard_filter_calls) == graphs1 - graphs0  # every plan's graph, not only the first one compiled
    for offered, kept in guard_filter_calls:
        assert offered > 1000 and kept < offered / 4, (offered, kept)  # ~1,900 -> ~260 on this model
    _generation(transformer, timesteps)
    assert _graphs()[0] == graphs1  # still one graph per plan: nothing recompiles
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_input_guards_recompile_for_a_new_input_size(guard_filter_calls):
    """The call's tensor guards stay: a batch of two is a new graph, not a graph built for one sample."""
    transformer = tiny_latte_transformer(num_layers=1)
    handle = apply_pab(transformer, get_preset("PAB-246", model="latte"))
    timesteps = _timesteps(10)
    eager = _generation(transformer, timesteps, batch=2)
    handle.compile(guards="inputs", backend="eager", fullgraph=True)
    _generation(transformer, timesteps, batch=1)
    graphs = _graphs()[0]
    compiled = _generation(transformer, timesteps, batch=2)
    assert _graphs()[0] > graphs
    for a, b in zip(eager, compiled):
        assert b.shape[0] == 2
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_input_guards_follow_a_reconfigured_pab(guard_filter_calls):
    """Whether a module hands its output back (a later step may reuse it) is in the plan key: unguarded, a graph
    compiled while spatial attention never broadcast would keep dropping its outputs after `configure` turned it on,
    and spatial attention would never broadcast again."""
    import dataclasses

    pab246 = get_preset("PAB-246", model="latte")
    timesteps = _timesteps(20)
    reference = tiny_latte_transformer(num_layers=1)
    reference_handle = apply_pab(reference, pab246)
    expected = _generation(reference, timesteps)
    transformer = tiny_latte_transformer(num_layers=1)
    handle = apply_pab(transformer, dataclasses.replace(pab246, spatial=None))
    handle.compile(guards="inputs", backend="eager", fullgraph=True)
    _generation(transformer, timesteps)
    assert handle.stats.kinds["spatial"].broadcast == 0
    handle.configure(pab246)
    compiled = _generation(transformer, timesteps)
    assert handle.stats.to_dict() == reference_handle.stats.to_dict()
    assert handle.stats.kinds["spatial"].broadcast > 0
    for a, b in zip(expected, compiled):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_input_guards_apply_to_a_model_compiled_without_pab(guard_filter_calls):
    """A generator whose model PAB cannot hook compiles the bare transformer: `guards` reaches it too."""
    model, x = _TwoLinears().eval(), torch.randn(4, 32)
    generator = SimpleNamespace(parallel=None, pab_handles=(), pipeline=SimpleNamespace(transformer=model))
    report = compile_generator(generator, {"backend": "eager", "guards": "inputs", "warm_up": False})
    with torch.no_grad():
        expected = model.forward(x)  # the uncompiled forward
        torch.testing.assert_close(model(x), expected)
    assert report.to_dict()["guards"] == "inputs" and report.graphs == 1
    [(offered, kept)] = guard_filter_calls
    assert kept < offered / 2, (offered, kept)  # the weights' and submodules' guards are gone


def test_input_guards_take_a_mode_as_its_inductor_options():
    from torch._inductor import list_mode_options

    from pab.compiled import drop_model_guards, with_guards

    given = {"backend": "inductor", "mode": "max-autotune-no-cudagraphs", "fullgraph": True}
    lean = with_guards(given, "inputs")
    assert "mode" not in lean and lean["fullgraph"] is True
    assert lean["options"] == {**list_mode_options("max-autotune-no-cudagraphs"), "guard_filter_fn": drop_model_guards}
    assert given["mode"] == "max-autotune-no-cudagraphs" and "options" not in given  # the caller's dict untouched
    assert with_guards(given, "full") == given
    kept = with_guards({"options": {"cpp_wrapper": True}}, "inputs")["options"]
    assert kept == {"cpp_wrapper": True, "guard_filter_fn": drop_model_guards}
    with pytest.raises(ValueError, match="needs backend 'inductor'"):
        with_guards({"backend": "eager", "mode": "max-autotune-no-cudagraphs"}, "inputs")
    with pytest.raises(ValueError, match="guards must be one of"):
        with_guards({}, "model")
    with pytest.raises(CompileConfigError, match="needs backend 'inductor'"):
        CompileConfig(backend="eager", mode="max-autotune-no-cudagraphs", guards="inputs")


@pytest.mark.slow
def test_inductor_compiled_pab_matches_eager():
    """The real backend, once: 4 distinct plans of PAB-246 over 8 steps, each a C++ graph (tens of seconds)."""
    transformer = tiny_latte_transformer(num_layers=1)
    handle = apply_pab(transformer, get_preset("PAB-246f", model="latte"))
    timesteps = _timesteps(8)
    eager = _generation(transformer, timesteps)
    handle.compile(fullgraph=True)
    graphs0, breaks0 = _graphs()
    compiled = _generation(transformer, timesteps)
    assert _graphs() == (graphs0 + _distinct_plans(handle, timesteps), breaks0)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("guards", ["full", "inputs"])
def test_video_generator_compile_option(guards):
    params = GenerationParams(prompt="a red disc moving up", seed=5, num_inference_steps=6)
    defaults = {"num_inference_steps": 6}  # the warm-up runs at the defaults
    plain = VideoGenerator(random_tiny_shapes(0), pab="PAB-246", defaults=defaults)
    expected = plain.generate(params)
    assert plain.compile_report is None
    generator = VideoGenerator(random_tiny_shapes(0), pab="PAB-246", defaults=defaults,
                               compile={"backend": "eager", "guards": guards})
    report = generator.compile_report
    assert generator.pab_handle.compiled and report.warm_up_s > 0
    assert report.graphs >= 2 and report.graph_breaks == 0  # the warm-up at the defaults compiled its plans
    got = generator.generate(params)
    np.testing.assert_array_equal(got.frames, expected.frames)
    assert got.stats.pab == expected.stats.pab
    assert report.to_dict()["backend"] == "eager" and report.to_dict()["guards"] == guards


def test_every_denoising_expert_is_compiled():
    """Wan 2.2 A14B switches from its first expert to its second at a boundary step: both run compiled."""
    from pab.runtime.models.registry import EMBEDDED_MODELS

    model = EMBEDDED_MODELS["tiny-wan22"]
    params = GenerationParams(prompt="a cat", seed=3, num_inference_steps=8)
    expected = VideoGenerator(model.build(seed=5), pab="PAB-246", defaults=model.defaults()).generate(params)
    generator = VideoGenerator(model.build(seed=5), pab="PAB-246", defaults=model.defaults(),
                               compile={"backend": "eager", "warm_up": False})
    assert len(generator.pab_handles) == 2 and all(handle.compiled for handle in generator.pab_handles)
    graphs = _graphs()[0]
    got = generator.generate(params)
    assert _graphs()[0] - graphs >= 2 and all(h.stats.forwards > 0 for h in generator.pab_handles)  # both ran
    np.testing.assert_array_equal(got.frames, expected.frames)


def test_compile_config_is_validated_and_refuses_parallel():
    assert CompileConfig.resolve(False) is None and CompileConfig.resolve(None) is None
    assert CompileConfig.resolve(True) == CompileConfig()
    assert CompileConfig.resolve({"backend": "eager", "warm_up": False}).backend == "eager"
    with pytest.raises(CompileConfigError, match="backnd"):
        CompileConfig.resolve({"backnd": "eager"})
    cfg = CompileConfig.resolve({"options": {"cpp_wrapper": True}})
    assert cfg.compile_kwargs()["options"] == {"cpp_wrapper": True} and "options" not in CompileConfig().compile_kwargs()
    with pytest.raises(CompileConfigError, match="mode or options"):
        CompileConfig(mode="max-autotune-no-cudagraphs", options={"cpp_wrapper": True})
    with pytest.raises(CompileConfigError, match="bool or a mapping"):
        CompileConfig.resolve("inductor")
    assert CompileConfig().guards == "full" and CompileConfig.resolve({"guards": "inputs"}).guards == "inputs"
    with pytest.raises(CompileConfigError, match="guards must be one of"):
        CompileConfig.resolve({"guards": "none"})
    split = SimpleNamespace(config=ParallelConfig(sp_degree=2), pab_handle=None)
    with pytest.raises(CompileConfigError, match="sp_degree=1"):
        compile_generator(SimpleNamespace(parallel=split, pab_handles=()), True)


def test_video_generator_refuses_compile_with_parallel_before_applying_anything():
    pipeline = random_tiny_shapes(0)
    for parallel in (ParallelConfig(sp_degree=2), ParallelConfig(cfg_degree=2)):
        with pytest.raises(CompileConfigError, match="sp_degree=1 and cfg_degree=1"):
            VideoGenerator(pipeline, pab="PAB-246", parallel=parallel, compile=True)
    # Nothing was applied: no process group was asked for, no hook is left on the transformer.
    assert getattr(pipeline.transformer, "_pab_handle", None) is None
    assert getattr(pipeline.transformer, "_pab_parallel", None) is None
    assert not pipeline.transformer._forward_hooks and not pipeline.transformer._forward_pre_hooks


def test_one_process_parallel_setting_compiles(tmp_path):
    """sp_degree = cfg_degree = 1 installs no collective: the serving workers pass it (in a one-process group), and
    compile works with it."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        generator = VideoGenerator(random_tiny_shapes(0), pab="PAB-246", parallel=ParallelConfig(),
                                   defaults={"num_inference_steps": 4}, compile={"backend": "eager"})
        assert generator.parallel is not None and generator.pab_handle.compiled
        assert generator.compile_report.graphs >= 2 and generator.compile_report.graph_breaks == 0
    finally:
        dist.destroy_process_group()


def test_serving_config_exposes_compile_off_by_default():
    from serve_app.config import AppConfig

    assert AppConfig().compile is False
    assert AppConfig(compile={"mode": "max-autotune-no-cudagraphs"}, sp_degree=1).compile == {
        "mode": "max-autotune-no-cudagraphs"}
    assert AppConfig(compile=True, sp_degree=1).compile is True
    assert AppConfig(compile={"guards": "inputs"}, sp_degree=1).compile == {"guards": "inputs"}


@pytest.mark.parametrize("fields,message", [
    ({"compile": True}, "compile: compile is not supported with sequence or CFG parallel"),  # default sp_degree=2
    ({"compile": True, "sp_degree": 1, "cfg_degree": 2}, "use sp_degree=1 and cfg_degree=1"),
    ({"compile": {"backnd": "eager"}, "sp_degree": 1}, "compile: unknown compile field"),
    ({"compile": {"mode": "max-autotune", "options": {"cpp_wrapper": True}}, "sp_degree": 1}, "mode or options"),
    ({"compile": {"guards": "some"}, "sp_degree": 1}, "compile: compile: guards must be one of"),
])
def test_serving_config_refuses_a_compile_setting_the_workers_cannot_load(fields, message):
    from pydantic import ValidationError

    from serve_app.config import AppConfig

    with pytest.raises(ValidationError, match=message):
        AppConfig(**fields)


class _TwoLinears(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _linear_kernels(call, x: torch.Tensor) -> set[str]:
    """The linear-layer ops one (already compiled) call runs, from the profiler."""
    with torch.profiler.profile() as prof:
        call(x)
    return {e.name for e in prof.events() if "addmm" in e.name or "linear" in e.name}


@pytest.mark.parametrize("options,frozen", [(None, False), ({"freezing": True}, True)])
def test_inductor_freezing_is_applied_to_the_plan_forwards(options, frozen):
    """Frozen, inductor prepacks the weights once (MKL linear) instead of an `addmm` per call. Passed only in
    `torch.compile(options=...)` dynamo ignores it while tracing: the PlanCompiler patches the config around calls."""
    from pab.compiled import PlanCompiler

    model, x = _TwoLinears().eval(), torch.randn(4, 32)
    compile_kwargs = {"fullgraph": True, **({"options": options} if options else {})}
    with torch.no_grad():
        expected = model(x)
        call = PlanCompiler(model.forward, compile_kwargs)((True,))
        torch.testing.assert_close(call(x), expected)
        kernels = _linear_kernels(call, x)
        assert ("aten::addmm" not in kernels) == frozen, kernels
        if not frozen:
            return
        assert any("mkl" in k or "mkldnn" in k for k in kernels), kernels
        torch._dynamo.reset()  # the same options straight to torch.compile: built unfrozen
        plain = torch.compile(model.forward, **compile_kwargs)
        plain(x)
        assert "aten::addmm" in _linear_kernels(plain, x)
