"""One `torch.compile`d transformer forward per broadcast plan, chosen in Python before the call.

PAB's root hook knows, before a forward runs, which modules broadcast (`plan`). Compiling one forward for every plan
would leave dynamo to find the right graph by evaluating the guards of every graph it holds for that code object,
one after another, on every call - on a small model that guard walk costs as much as the attention PAB skips. Here
each plan gets its own copy of the forward's code object, hence its own dynamo cache with a single entry: the plan
is looked up in a dict, and dynamo checks one set of guards (it still recompiles on a new input size or dtype).

Inductor's `freezing` option (weights as constants: on CPU, linear weights prepacked for MKL once instead of an
`addmm` per call) is read by dynamo while it traces, from the global inductor config, not from the `options` passed to
`torch.compile`: passed only there, the graphs are built unfrozen. So when `freezing` is asked for, every call of a
compiled forward (any of which may trace: a new input size recompiles) runs inside a config patch that sets it, and
nothing outside PAB's forwards is frozen.

Dynamo guards a compiled forward on everything its trace read: on the tiny Latte ~1,900 checks per call, ~1,650 of
them on the model reached through `self` (each module's hooks dict, type and flags, each weight's metadata). Evaluated
before every call, they cost a fifth of a compiled forward on the tiny models, and more for PAB, whose five graphs'
guard trees take turns in the cache. `guards="inputs"` keeps the checks on what a call passes in (its tensors' sizes,
dtypes, devices and strides, its other arguments, the broadcast outputs, torch's global state) and drops those on the
model: PAB's own per-forward decisions are in the plan key, so what is left unguarded is the model itself, which
must then not change after compiling (no new processors, hooks, adapters, training mode or weight shapes; weight
values may change unless frozen) - compile again after such a change.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Callable

import torch

Plan = tuple[int, ...]
"""Per broadcast hook, in the root hook's order, what it does this forward: `COMPUTE`, `KEEP` (compute and hand its
output back, a later step may reuse it) or `REUSE` (return the cached or forecast output)."""
COMPUTE, KEEP, REUSE = 0, 1, 2

GUARDS = ("full", "inputs")
"""`full`: dynamo's own guards; `inputs`: only those on the call's arguments and global state (module docstring)."""


def drop_model_guards(entries: list[Any]) -> list[bool]:
    """A dynamo `guard_filter_fn` for a compiled bound method: keep every guard except those on `self`'s attributes."""
    return [not entry.name.startswith("self.") for entry in entries]


def fresh_method(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` (a bound method) with a copy of its function's code object: same behaviour, its own dynamo cache."""
    func, owner = method.__func__, method.__self__
    clone = types.FunctionType(func.__code__.replace(), func.__globals__, func.__name__, func.__defaults__,
                               func.__closure__)
    clone.__kwdefaults__ = func.__kwdefaults__
    clone.__qualname__, clone.__doc__, clone.__module__ = func.__qualname__, func.__doc__, func.__module__
    return types.MethodType(clone, owner)


class PlanCompiler:
    """Compiled forwards keyed by plan, compiled on first use with the same `torch.compile` options."""

    def __init__(self, forward: Callable[..., Any], options: dict[str, Any], guards: str = "full") -> None:
        self._forward = forward
        self._options = with_guards(options, guards)
        self._compiled: dict[Plan, Callable[..., Any]] = {}
        self._tracing_config = _tracing_config(options)

    def __call__(self, plan: Plan) -> Callable[..., Any]:
        compiled = self._compiled.get(plan)
        if compiled is None:
            compiled = self._compiled[plan] = self._compile()
        return compiled

    def _compile(self) -> Callable[..., Any]:
        options = {**self._options}
        if options.get("options") is not None:  # torch.compile pops `guard_filter_fn` out of it: one copy per graph
            options["options"] = dict(options["options"])
        compiled = torch.compile(fresh_method(self._forward), **options)
        patch = self._tracing_config
        if patch is None:
            return compiled

        def call(*args: Any, **kwargs: Any) -> Any:
            with patch:
                return compiled(*args, **kwargs)

        return call

    @property
    def plans(self) -> int:
        """Distinct plans seen so far (each one compiled graph per input size)."""
        return len(self._compiled)


def check_guards(guards: str, backend: Any = "inductor", mode: str | None = None) -> None:
    """Refuse a `guards` setting `with_guards` cannot apply (ValueError naming it); imports nothing."""
    if guards not in GUARDS:
        raise ValueError(f"guards must be one of {list(GUARDS)}, got {guards!r}")
    if guards == "inputs" and mode is not None and backend != "inductor":
        raise ValueError(f"guards 'inputs' with a mode needs backend 'inductor' (mode {mode!r} is inductor's)")


def with_guards(options: dict[str, Any], guards: str) -> dict[str, Any]:
    """`torch.compile` keyword arguments with the guard filter of `guards` among its `options` (where torch takes it;
    a `mode` becomes the inductor options it stands for, as torch refuses `mode` and `options` together)."""
    check_guards(guards, options.get("backend", "inductor"), options.get("mode"))
    if guards == "full":
        return options
    options = dict(options)
    inductor = dict(options.pop("options", None) or {})
    mode = options.pop("mode", None)
    if mode is not None:
        from torch._inductor import list_mode_options  # only for a mode with input guards: it imports inductor

        inductor = {**list_mode_options(mode, options.get("dynamic")), **inductor}
    return {**options, "options": {**inductor, "guard_filter_fn": drop_model_guards}}


def _tracing_config(options: dict[str, Any]) -> contextlib.AbstractContextManager | None:
    """A reusable inductor config patch for the options dynamo reads while tracing (`freezing`), or None."""
    inductor = options.get("options") or {}
    if not inductor.get("freezing"):
        return None
    import torch._inductor.config as inductor_config  # only when compiling: it imports inductor

    return inductor_config.patch(freezing=True)
