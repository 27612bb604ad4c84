"""Forward hooks, in one place, as context managers that remove their handles on exit.

Hooks only act for the thread that opened them: the service computes an edit while other threads generate
with the same modules, and their forwards must neither be captured nor made to require grad.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class _ThreadHooks:
    # A hook registered with_kwargs is stored first and flagged as taking kwargs next, so another thread's forward
    # in between calls it without them: those take kwargs=None and, not being that thread's, do nothing.
    def __init__(self) -> None:
        self._handles: list = []
        self._thread = threading.get_ident()

    def _mine(self) -> bool:
        return threading.get_ident() == self._thread

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class CaptureLayers(_ThreadHooks):
    """Keep each module's input u (B, T, in) and output (B, T, out), and start autograd at `grad_from`.

    The model's parameters are frozen, so nothing below `grad_from` builds a graph; its input is made a leaf
    that requires grad, so one backward runs through the edited blocks only and stops there.
    """

    def __init__(self, modules: dict[str, nn.Module], grad_from: nn.Module | None = None) -> None:
        super().__init__()
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        for name, mod in modules.items():
            self._handles.append(mod.register_forward_hook(self._keep(name)))
        if grad_from is not None:
            self._handles.append(grad_from.register_forward_pre_hook(self._leaf, with_kwargs=True))

    def _keep(self, name: str):
        def hook(_mod, args, out):
            if self._mine():
                self.inputs[name], self.outputs[name] = args[0], out

        return hook

    def _leaf(self, _mod, args, kwargs=None):
        if not self._mine() or not torch.is_grad_enabled():
            return None
        if args:
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        kwargs["hidden_states"] = kwargs["hidden_states"].detach().requires_grad_(True)
        return args, kwargs


class SkipPrefix(_ThreadHooks):
    """Replace the blocks below `first` by a given input to block `first` (the frozen-prefix cache), in the forwards
    of the thread that opened this only.

    Blocks before `first` pass their input through and block `first` receives `hidden` instead of what they made;
    the embedding, masks and position encodings are still computed, which costs little. Another thread's forward
    through the same blocks meanwhile runs whole: the service checks an edit's candidate deltas this way while
    other threads generate.
    """

    def __init__(self, blocks: nn.ModuleList, first: int, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden
        self._skipped = list(blocks)[:first]
        for block in self._skipped:
            _pass_through(block)
        self._saved = getattr(_skipping, "blocks", frozenset())
        _skipping.blocks = frozenset(id(b) for b in self._skipped)
        self._handles.append(blocks[first].register_forward_pre_hook(self._inject, with_kwargs=True))

    def _inject(self, _mod, args, kwargs=None):
        if not self._mine():
            return None
        if args:
            return (self.hidden, *args[1:]), kwargs
        kwargs["hidden_states"] = self.hidden
        return args, kwargs

    def __exit__(self, *exc) -> None:
        _skipping.blocks = self._saved
        for block in self._skipped:
            _run_through(block)
        super().__exit__(*exc)


# A block is skipped by a forward of its own that checks whose thread calls it, installed while any thread skips it
# (counted) and removed after the last: swapping the forward for every thread would feed another thread's
# generation the wrong hidden states. A forward set on the instance before (accelerate's device hooks) is kept.
_skipping = threading.local()
_swap_lock = threading.Lock()
_swapped: dict[int, tuple[int, object]] = {}  # id(block) -> (threads skipping it, the instance forward it had)


def _pass_through(block: nn.Module) -> None:
    with _swap_lock:
        users, own = _swapped.get(id(block), (0, None))
        if users == 0:
            own = block.__dict__.get("forward")
            inner = own or type(block).forward.__get__(block)

            def forward(hidden_states, *args, **kwargs):
                if id(block) in getattr(_skipping, "blocks", ()):
                    return hidden_states
                return inner(hidden_states, *args, **kwargs)

            block.forward = forward
        _swapped[id(block)] = (users + 1, own)


def _run_through(block: nn.Module) -> None:
    with _swap_lock:
        users, own = _swapped.pop(id(block))
        if users > 1:
            _swapped[id(block)] = (users - 1, own)
        elif own is not None:
            block.forward = own
        else:
            del block.forward  # the class's forward shows through again


class CaptureBlockInput(_ThreadHooks):
    """Record what block `first` receives: the value SkipPrefix later replays."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.hidden: torch.Tensor | None = None
        self._handles.append(block.register_forward_pre_hook(self._keep, with_kwargs=True))

    def _keep(self, _mod, args, kwargs=None):
        if self._mine():
            self.hidden = (args[0] if args else kwargs["hidden_states"]).detach()


class _Stop(Exception):
    pass


def input_of_block(model: nn.Module, block: nn.Module, **inputs) -> torch.Tensor:
    """Run the model only up to `block` and return what that block receives; the rest of the forward is skipped.
    Other threads' forwards through the same modules meanwhile run whole."""
    me = threading.get_ident()

    def stop(*_a, **_k):
        if threading.get_ident() == me:
            raise _Stop

    with CaptureBlockInput(block) as cap:
        handle = block.register_forward_pre_hook(stop)  # after the capture's own hook, which must run first
        try:
            model(**inputs)
        except _Stop:
            pass
        finally:
            handle.remove()
    return cap.hidden


# ---- scoped edits: long-lived hooks that read what to do from the calling thread ---------------------------------

RowFactors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # rows (n,), down (n, in, R), up (n, R, out)


def add_row_deltas(module: nn.Module, rows_now: Callable[[], RowFactors | None]) -> RemovableHandle:
    """A forward hook that adds, to the output rows `rows`, (x[rows] @ down) @ up: one batched low-rank product per
    module for every row's own delta. `rows_now()` says what the calling thread's forward adds (None: nothing)."""
    def hook(_mod, args, out):
        stacked = rows_now()
        if stacked is None:
            return None
        rows, down, up = stacked
        x = args[0]  # (B, T, in)
        rows = rows.to(x.device)
        return out.index_add(0, rows, torch.bmm(torch.bmm(x[rows], down.to(x)), up.to(x)))

    return module.register_forward_hook(hook)


def on_block_input(block: nn.Module, take: Callable[[torch.Tensor], None]) -> RemovableHandle:
    """A forward pre-hook that hands what `block` receives (its hidden states) to `take`, on every forward."""
    def hook(_mod, args, kwargs=None):
        # kwargs=None: a with_kwargs hook can be called without them while it is being registered (_ThreadHooks),
        # by a forward of another thread, which has nothing to take.
        hidden = args[0] if args else (kwargs or {}).get("hidden_states")
        if hidden is not None:
            take(hidden)

    return block.register_forward_pre_hook(hook, with_kwargs=True)
