"""Pyramid Attention Broadcast on diffusers transformers, through the `diffusers.hooks` machinery.

One root hook on the transformer reads the timestep from the transformer's own forward arguments, names the CFG pass
(the pipeline's `cache_context`, e.g. "cond"/"uncond"), and notices when a new generation starts. One broadcast hook
per classified module then applies the paper's rule per pass: each pass has its own counter and cache, so a two-pass
CFG model never reuses the conditional output for the unconditional pass.

The root hook makes every decision of a forward before it runs - the step rule (`pab.step_cache`) may skip the
whole forward; otherwise each module is told to compute, reuse its output or forecast it (`pab.forecast`) - so the
forward itself holds no bookkeeping and can be compiled (`PABHandle.compile`) without graph breaks.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from .adapters import MLP_KIND, ModelAdapter, adapter_for
from .compiled import COMPUTE, KEEP, REUSE, PlanCompiler
from .config import TIMESTEP_SCALE, PABConfig, PABConfigError
from .forecast import ForecastHistory
from .stats import OTHER_KIND, PABStats, comm_scope
from .step_cache import StepCache

ROOT_HOOK = "pab_timestep"
BROADCAST_HOOK = "pab_broadcast"
_DIFFUSERS_PAB_HOOK = "pyramid_attention_broadcast"
DEFAULT_BRANCH = "default"


class PABApplyError(ValueError):
    """PAB cannot be applied as asked (already applied, unsupported model, no module matched)."""


class _ContextOnly(BaseState):
    """Placeholder state: the root hook's StateManager only receives the pipeline's cache_context name."""

    def reset(self) -> None:
        pass


@dataclass
class GenerationState:
    """Shared by every hook of one `apply_pab`: where the denoising loop is and what has been counted."""

    config: PABConfig
    stats: PABStats
    two_pass_cfg: bool
    generation: int = 0
    timestep: float = 0.0
    branch: str = DEFAULT_BRANCH
    last_timestep: float | None = None
    calls_at_timestep: int = 0
    pending_reset: bool = True

    def begin_forward(self, timestep: float, context_name: str | None) -> None:
        if self.pending_reset or (self.last_timestep is not None and timestep > self.last_timestep):
            self.start_generation()
        if timestep == self.last_timestep:
            self.calls_at_timestep += 1
        else:
            self.calls_at_timestep = 0
        self.timestep = timestep
        self.last_timestep = timestep
        if context_name is not None:
            self.branch = context_name
        elif self.two_pass_cfg:  # no cache_context from the pipeline: the n-th call at a timestep is the n-th pass
            self.branch = f"pass{self.calls_at_timestep}"
        else:
            self.branch = DEFAULT_BRANCH
        self.stats.forwards += 1

    def start_generation(self) -> None:
        self.generation += 1
        self.pending_reset = False
        self.last_timestep = None
        self.calls_at_timestep = 0
        self.stats.reset()
        self.stats.preset = self.config.name


class TimestepHook(ModelHook):
    """Root hook: reads the timestep and CFG pass, decides every broadcast of this forward, runs it (compiled or not).

    All bookkeeping happens here, in eager Python, before and after the transformer's own forward: the step rule may
    answer the forward from its cache; otherwise each broadcast hook is told whether it computes or what it returns
    (`plan`), the forward runs, and the outputs it computed are kept (`commit`). Inside the forward a broadcast hook
    only reads that decision, so a compiled forward has no graph break and is specialised on the decisions alone.
    """

    _is_stateful = True

    def __init__(self, state: GenerationState, timestep_position: int | None, reversed_timesteps: bool = False) -> None:
        super().__init__()
        self.state = state
        self.timestep_position = timestep_position
        self.reversed_timesteps = reversed_timesteps  # Mochi passes 1000 - t: read it back as the diffusion timestep
        self.context = StateManager(_ContextOnly)  # diffusers' cache_context() sets names on StateManager attributes
        self.broadcast_hooks: list[BroadcastHook] = []
        self.steps = StepCache()
        self.compiler: PlanCompiler | None = None

    def _read_timestep(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
        context = self.context._context
        if context is not None and isinstance(context.timestep, (int, float)):
            return float(context.timestep)  # the pipeline said it as a number: no device read
        value = kwargs.get("timestep")
        if value is None and self.timestep_position is not None and len(args) > self.timestep_position:
            value = args[self.timestep_position]
        if value is None:
            raise PABApplyError("PAB needs the diffusion timestep, but the transformer was called without `timestep`")
        if isinstance(value, torch.Tensor):  # one read per forward, eager: the compiled region never sees it
            value = value.item() if value.numel() == 1 else (value.min() if self.reversed_timesteps else value.max())
        return TIMESTEP_SCALE - float(value) if self.reversed_timesteps else float(value)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        context = self.context._context
        timestep = self._read_timestep(args, kwargs)
        state.begin_forward(timestep, context.name if context else None)
        step_rule = state.config.step
        cached = self.steps.lookup(step_rule, state.generation, state.branch, timestep, state.stats,
                                   self.broadcast_hooks)
        if cached is not None:
            return cached
        for hook in self.broadcast_hooks:
            hook.plan(timestep)
        forward = self.fn_ref.original_forward if self.compiler is None else self._compiled_forward()
        log: list[tuple[str, int]] = []
        try:
            with comm_scope(state.stats, OTHER_KIND, log):
                output = forward(*args, **kwargs)
        finally:
            for hook in self.broadcast_hooks:
                hook.commit(timestep)
        self.steps.record(step_rule, state.branch, timestep, output, log)
        return output

    def _compiled_forward(self) -> Callable[..., Any]:
        """The compiled forward of this forward's plan, with the broadcast outputs bound as its first argument."""
        reuses = tuple(hook.reuse for hook in self.broadcast_hooks)
        plan = tuple(REUSE if h.reuse is not None else KEEP if h.keeps else COMPUTE for h in self.broadcast_hooks)
        return functools.partial(self.compiler(plan), reuses)

    def forward_with_outputs(self, reuses: tuple[torch.Tensor | None, ...], *args: Any, **kwargs: Any) -> Any:
        """The transformer's forward with each broadcast hook's planned output handed in as an argument (what gets
        compiled). Read as a hook attribute inside the compiled region, inductor's `freezing` would take the tensor
        for a constant of the model: a guard on its identity, one recompile per step."""
        for hook, reuse in zip(self.broadcast_hooks, reuses):
            if reuse is not None:  # the others are None already (`plan`): no side effect to replay
                hook.reuse = reuse
        return self.fn_ref.original_forward(*args, **kwargs)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        # Pipelines reset stateful hooks when a call ends: keep the finished generation's stats readable until the
        # next generation starts, but start that one from scratch, and free the cached activations now.
        self.state.pending_reset = True
        self.steps.reset()
        for hook in self.broadcast_hooks:
            hook.passes.clear()
        return module


@dataclass
class _PassState:
    counter: int = 0
    history: ForecastHistory | None = None  # None: the rule never broadcasts, nothing is kept
    comm_log: list[tuple[str, int]] = field(default_factory=list)
    last_timestep: float | None = None
    reuse_left: int = 0


class BroadcastHook(ModelHook):
    """Per-module hook: compute, or return what `plan` chose (the cached output or its forecast) for this CFG pass.

    Not "stateful" for diffusers: the root hook resets it, so that `cache_context`, which visits every stateful hook
    twice per forward, does not walk these.
    """

    _is_stateful = False

    def __init__(self, state: GenerationState, name: str, kind: str, block: int) -> None:
        super().__init__()
        self.state = state
        self.name = name
        self.kind = kind
        self.block = block
        self.passes: dict[str, _PassState] = {}
        self.generation = -1
        self.reuse: Any = None  # set by plan(): returned instead of computing
        self.fresh: Any = None  # set by new_forward(): the output computed in this forward, when kept
        # Whether this forward's output is kept (a later step may reuse it): a plain bool set by plan(), because the
        # compiled region reads it (dynamo guards one constant, not the per-pass state behind it; it is in the plan).
        self.keeps = False
        self._computing: _PassState | None = None
        self._log: list[tuple[str, int]] = []

    def _pass_state(self) -> _PassState:
        if self.generation != self.state.generation:
            self.passes.clear()
            self.generation = self.state.generation
        ps = self.passes.get(self.state.branch)
        if ps is None:
            keep = self._history_length()
            ps = self.passes[self.state.branch] = _PassState(history=ForecastHistory(keep) if keep else None)
        return ps

    def _history_length(self) -> int:
        """Outputs to keep per pass: forecast order + 1 for a broadcasting rule, none when the module never reuses."""
        config = self.state.config
        if self.kind == MLP_KIND:
            return int(config.mlp is not None and config.mlp.range > 1 and self.block in config.mlp.blocks)
        rule = config.rule_for(self.kind)
        return rule.forecast_order + 1 if rule is not None and rule.range > 1 else 0

    def _should_broadcast(self, ps: _PassState, timestep: float) -> bool:
        if ps.history is None:
            return False
        if self.kind != MLP_KIND:
            return len(ps.history) > 0 and self.state.config.rule_for(self.kind).broadcasts(ps.counter, timestep)
        rule = self.state.config.mlp
        previous = float("inf") if ps.last_timestep is None else ps.last_timestep
        if any(previous > anchor >= timestep for anchor in rule.timesteps):
            ps.reuse_left = rule.range - 1  # this step computes the output the next steps reuse
            return False
        if ps.reuse_left > 0 and len(ps.history):
            ps.reuse_left -= 1
            return True
        return False

    def _forecast_order(self) -> int:
        return 0 if self.kind == MLP_KIND else self.state.config.rule_for(self.kind).forecast_order

    def plan(self, timestep: float) -> None:
        """Decide this forward's call (eager, before the forward runs) and book it."""
        ps = self._pass_state()
        stats = self.state.stats
        counts = stats.kinds[self.kind]
        counts.calls += 1
        self.fresh, self._computing = None, None
        if self._should_broadcast(ps, timestep):
            order = self._forecast_order()
            counts.broadcast += 1
            counts.forecast += int(order > 0 and len(ps.history) > 1)
            for op, nbytes in ps.comm_log:
                stats.book_skipped(self.kind, op, nbytes)
            self.reuse = ps.history.predict(timestep, order)
        else:
            counts.computed += 1
            self.reuse, self._computing, self._log = None, ps, []
        self.keeps = ps.history is not None
        ps.counter += 1
        ps.last_timestep = timestep

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        reuse = self.reuse
        if reuse is not None:
            return reuse
        if torch.compiler.is_compiling():  # collectives are not counted inside a compiled forward (no parallel there)
            output = self.fn_ref.original_forward(*args, **kwargs)
        else:
            with comm_scope(self.state.stats, self.kind, self._log):
                output = self.fn_ref.original_forward(*args, **kwargs)
        if self.keeps:  # a tensor kept here is one more output of a compiled graph: only when a step may reuse it
            self.fresh = output
        return output

    def commit(self, timestep: float) -> None:
        """After the forward: keep what this module computed (eager), and forget this forward's decision."""
        ps, output = self._computing, self.fresh
        self.reuse = self.fresh = self._computing = None
        if ps is None or (ps.history is not None and output is None):  # nothing planned, or it did not run
            return
        ps.comm_log = self._log
        if ps.history is not None:
            ps.history.push(timestep, output)

    def skipped_collectives(self) -> list[tuple[str, int]]:
        """The collectives this module's last computation in the current pass issued (what skipping it saves)."""
        ps = self.passes.get(self.state.branch) if self.generation == self.state.generation else None
        return ps.comm_log if ps is not None else []



class PABHandle:
    """What `apply_pab` returns: the live stats, and the way to reconfigure, reset or remove PAB."""

    def __init__(self, transformer: torch.nn.Module, adapter: ModelAdapter, state: GenerationState,
                 modules: dict[str, tuple[str, int]], root: TimestepHook) -> None:
        self.transformer = transformer
        self.adapter = adapter
        self._state = state
        self.modules = modules
        self._root = root
        self._removed = False

    @property
    def compiled(self) -> bool:
        return self._root.compiler is not None

    def compile(self, guards: str = "full", **options: Any) -> None:
        """
        `torch.compile` the transformer's forward under PAB, with PAB's decisions outside the compiled region.

        Args:
            guards: "full" (dynamo's own guards) or "inputs" (only those on each call's arguments: faster calls, but
                the model must not change after compiling; `pab.compiled`).
            options: passed to `torch.compile` (`backend`, `mode`, `fullgraph`, `dynamic`, ...).

        The decisions for a forward are made before it runs, so the compiled forward holds no graph break; it is
        specialised on which modules broadcast, one graph per distinct combination (`pab.compiled`, each with its
        own dynamo cache, picked by a dict lookup). Those combinations repeat with the pyramid's period (PAB-246 on
        Latte: 5 in any number of steps), so nothing recompiles step after step.
        """
        self._root.compiler = PlanCompiler(self._root.forward_with_outputs, options, guards)

    def uncompile(self) -> None:
        self._root.compiler = None

    @property
    def config(self) -> PABConfig:
        return self._state.config

    @property
    def stats(self) -> PABStats:
        return self._state.stats

    def configure(self, config: PABConfig) -> None:
        """Swap the rules; takes effect from the next generation on (caches start empty)."""
        if not isinstance(config, PABConfig):
            raise PABConfigError(f"config must be a PABConfig, got {type(config).__name__}")
        self._state.config = config
        self.reset()

    def reset(self) -> None:
        """Start the next forward as a new generation (counters, caches and stats from zero)."""
        self._state.pending_reset = True

    def remove(self) -> None:
        if self._removed:
            return
        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        registry.remove_hook(BROADCAST_HOOK, recurse=True)
        registry.remove_hook(ROOT_HOOK, recurse=False)
        self.uncompile()
        registry.invalidate_child_registries_cache()
        del self.transformer._pab_handle
        self._removed = True


def _timestep_position(transformer: torch.nn.Module) -> int | None:
    params = list(inspect.signature(type(transformer).forward).parameters)
    return params.index("timestep") - 1 if "timestep" in params else None  # minus `self`


def _has_hook(module: torch.nn.Module, name: str) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and name in registry.hooks


def apply_pab(transformer: torch.nn.Module, config: PABConfig, adapter: ModelAdapter | None = None) -> PABHandle:
    """
    Attach Pyramid Attention Broadcast to a diffusers video transformer.

    Args:
        transformer: e.g. `pipe.transformer` of a Latte, CogVideoX or Wan pipeline.
        config: the rules, e.g. `get_preset("PAB-246", model="latte")`.
        adapter: which modules are spatial / temporal / cross / MLP; found from the class when omitted.
    """
    if not isinstance(config, PABConfig):
        raise PABConfigError(f"config must be a PABConfig, got {type(config).__name__}; see pab.presets.get_preset")
    if getattr(transformer, "_pab_handle", None) is not None:
        raise PABApplyError("PAB is already applied to this transformer; use handle.configure(config) or handle.remove()")
    if any(_has_hook(m, _DIFFUSERS_PAB_HOOK) for m in transformer.modules()):
        raise PABApplyError("diffusers' own pyramid attention broadcast is applied to this transformer; remove it first")
    adapter = adapter or adapter_for(transformer)
    position = _timestep_position(transformer)
    if position is None:
        raise PABApplyError(f"{type(transformer).__name__}.forward takes no `timestep` argument; PAB cannot follow the steps")

    state = GenerationState(config=config, stats=PABStats(preset=config.name), two_pass_cfg=adapter.two_pass_cfg)
    modules: dict[str, tuple[str, int]] = {}
    root = TimestepHook(state, position, adapter.timestep_reversed)
    for name, kind, block, module in adapter.iter_modules(transformer):
        hook = BroadcastHook(state, name, kind, block)
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, BROADCAST_HOOK)
        root.broadcast_hooks.append(hook)
        modules[name] = (kind, block)
    if not modules:
        raise PABApplyError(
            f"adapter {adapter.name!r} matched no module of {type(transformer).__name__}; check its patterns"
        )
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(root, ROOT_HOOK)
    registry.invalidate_child_registries_cache()
    handle = PABHandle(transformer, adapter, state, modules, root)
    transformer._pab_handle = handle
    return handle
