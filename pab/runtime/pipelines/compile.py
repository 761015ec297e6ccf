"""`torch.compile` for a `VideoGenerator`'s transformer, stacked with PAB.

Compiling the transformer with PAB's hooks inside breaks the graph at every decision (a timestep read, a counter, a
context variable): 17 graphs on the tiny Latte, slower than eager. Here PAB decides each forward's broadcasts in its
root hook, outside the compiled region (`PABHandle.compile`), so the compiled forward has no graph break and is
specialised only on which modules broadcast: one graph per distinct combination, a handful that repeat with the
pyramid's period, so nothing recompiles step after step. A forward the step rule skips never enters it.

Compiling costs a warm-up (tens of seconds per graph on a 2-core CPU, BENCHMARKS.md), paid by the first generation
of each PAB setting; `warm_up` pays it for the default setting at construction instead of in the first request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from pab.adapters import pipeline_transformers
from pab.compiled import check_guards, with_guards
from pab.runtime.request.params import GenerationParams

RECOMPILE_LIMIT = 64
"""Graphs dynamo may keep per code object - the transformer class's forward, shared by every compiled instance of it
in the process. Its default, 8, is below what some PAB settings use, and past it dynamo runs eager (or, with
fullgraph, fails). Raised process-wide to at least this when compiling."""

WARM_UP_PROMPT = "a cat walking on the beach"


class CompileConfigError(ValueError):
    """A `compile` setting is not valid; the message names the field."""


@dataclass(frozen=True)
class CompileConfig:
    r"""
    How `VideoGenerator(compile=...)` compiles the transformer.

    Args:
        backend (`str`, defaults to "inductor"): `torch.compile` backend ("eager" / "aot_eager" to debug).
        mode (`str`, *optional*): `torch.compile` mode, e.g. "max-autotune-no-cudagraphs".
        fullgraph (`bool`, defaults to True): Refuse graph breaks: one would mean a decision leaked into the region.
        dynamic (`bool`, *optional*): `torch.compile`'s `dynamic` (None: recompile once for a new size, then dynamic).
        options (`dict`, *optional*): Inductor options, e.g. `{"cpp_wrapper": True}` (a C++ instead of a Python
            wrapper around the kernels: on the tiny CPU models it cuts the per-forward overhead by about a tenth, for
            about twice the compile time; BENCHMARKS.md), `{"freezing": True}` (weights as constants, CPU linear
            weights prepacked once; applied by `pab.compiled.PlanCompiler`). Freezing keeps one copy of the
            transformer's weights per compiled broadcast plan (measured: +36 MiB per plan for 32 MiB of linear
            weights, none without freezing): PAB-246 on Latte compiles 5 plans, so a 1B-parameter fp16 model would
            hold ~10 GB more. Not together with `mode`.
        guards (`str`, defaults to "full"): "full" keeps dynamo's guards; "inputs" keeps only those on each
            call's arguments and torch's global state (`pab.compiled`): ~1,900 checks per forward become ~260 on
            the tiny Latte, and compiled forwards run 7-13% faster there (BENCHMARKS.md). The model must then not
            change after compiling (processors, hooks, adapters, training mode, weight shapes): right for a served
            model, which never changes once loaded.
        warm_up (`bool`, defaults to True): Generate once at the model's defaults while compiling, so that the
            first request with the default PAB setting does not pay the compile.
    """

    backend: str = "inductor"
    mode: str | None = None
    fullgraph: bool = True
    dynamic: bool | None = None
    options: dict[str, Any] | None = None
    guards: str = "full"
    warm_up: bool = True

    def __post_init__(self) -> None:
        if self.mode is not None and self.options:
            raise CompileConfigError("compile: give mode or options, not both (torch.compile takes one of them)")
        try:
            check_guards(self.guards, self.backend, self.mode)
        except ValueError as exc:
            raise CompileConfigError(f"compile: {exc}") from None

    def compile_kwargs(self) -> dict[str, Any]:
        kwargs = {"backend": self.backend, "mode": self.mode, "fullgraph": self.fullgraph, "dynamic": self.dynamic}
        return {**kwargs, "options": dict(self.options)} if self.options else kwargs

    @classmethod
    def resolve(cls, value: "bool | Mapping[str, Any] | CompileConfig | None") -> "CompileConfig | None":
        """False/None: no compile; True: the defaults; a mapping: these fields over the defaults."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise CompileConfigError(f"compile must be a bool or a mapping of {_names()}, got {type(value).__name__}")
        unknown = sorted(set(value) - set(_names()))
        if unknown:
            raise CompileConfigError(f"unknown compile field(s) {unknown}; allowed: {_names()}")
        return cls(**value)


def _names() -> list[str]:
    return [f.name for f in fields(CompileConfig)]


def _graph_counts() -> tuple[int, int]:
    from torch._dynamo.utils import counters  # imported when compiling only: dynamo is slow to import

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


@dataclass
class CompileReport:
    """What compiling did: graphs built and graph breaks since `compile_generator` (process-wide dynamo counters,
    so other compiled code in the process counts too), and the warm-up generation's seconds."""

    config: CompileConfig
    warm_up_s: float | None = None
    _baseline: tuple[int, int] = field(default_factory=_graph_counts)

    @property
    def graphs(self) -> int:
        return _graph_counts()[0] - self._baseline[0]

    @property
    def graph_breaks(self) -> int:
        return _graph_counts()[1] - self._baseline[1]

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.config.backend, "mode": self.config.mode, "options": self.config.options,
                "guards": self.config.guards, "graphs": self.graphs,
                "graph_breaks": self.graph_breaks, "warm_up_s": self.warm_up_s}


def resolve_compile(value: "bool | Mapping[str, Any] | CompileConfig | None", parallel: Any) -> CompileConfig | None:
    """The `compile` setting of a generator with this `parallel` setting (a `ParallelConfig` or None), checked before
    anything is applied. One process (sp_degree = cfg_degree = 1) installs no collective, so it compiles."""
    config = CompileConfig.resolve(value)
    if config is not None and parallel is not None and parallel.world_size > 1:
        raise CompileConfigError(
            "compile is not supported with sequence or CFG parallel yet (the collectives run inside the forward); "
            "use sp_degree=1 and cfg_degree=1, or compile=False"
        )
    return config


def compile_generator(generator: Any, value: "bool | Mapping[str, Any] | CompileConfig") -> CompileReport | None:
    """Compile `generator`'s transformer (PAB decisions outside the region) and optionally warm it up."""
    config = resolve_compile(value, getattr(generator.parallel, "config", None))
    if config is None:
        return None
    import torch._dynamo  # dynamo's config: only once compiling is asked for (it takes seconds to import)

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    report = CompileReport(config)
    if generator.pab_handles:  # every denoising expert (Wan 2.2 A14B has two), each with its own plans
        for handle in generator.pab_handles:
            handle.compile(guards=config.guards, **config.compile_kwargs())
    else:
        for _, transformer in pipeline_transformers(generator.pipeline):
            transformer.compile(**with_guards(config.compile_kwargs(), config.guards))
    if config.warm_up:
        report.warm_up_s = _warm_up(generator)
    return report


def _warm_up(generator: Any) -> float:
    vocabulary = getattr(generator.pipeline, "prompt_vocabulary", None) or {}
    start = time.perf_counter()
    generator.generate(GenerationParams(prompt=vocabulary.get("example", WARM_UP_PROMPT), seed=0))
    return time.perf_counter() - start
