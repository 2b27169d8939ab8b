"""A simulated CUDA device for a CPU-only torch: compute on the CPU, fail where CUDA fails.

No GPU exists on the machines the tests run on, and a CPU-only torch refuses ``Tensor.to("cuda")`` outright, so
the CUDA path of every stage would go untested. :class:`SimulatedCuda` is a ``TorchFunctionMode`` that

* lets a tensor *be on* ``cuda:0`` while its data stays on the CPU: a factory given ``device="cuda"``,
  ``Tensor.to("cuda")`` / ``.cuda()``, ``Module.to("cuda")`` (which moves parameters through ``param.data = ...``)
  and every result of an op on such a tensor are tagged (an attribute on the tensor object, so the tag is
  per object, never per value); ``Tensor.device`` / ``.is_cuda`` report the tag, ``.cpu()`` / ``.to("cpu")``
  return an untagged copy;
* raises exactly where CUDA raises: an op mixing a tagged and an untagged tensor (other than a 0-dim CPU scalar
  and the ops CUDA lets take a CPU operand: ``copy_``, indexing, ``new_*``), ``.numpy()`` of a tagged tensor,
  a factory on ``cuda`` given a CPU generator, ``torch.cuda.set_rng_state`` given a tensor that is not a CPU
  ``ByteTensor``;
* patches ``torch.cuda`` (``is_available``, ``device_count``, the RNG, memory and synchronisation calls) as a
  one-GPU machine answers them, ``Tensor.pin_memory`` and factories' ``pin_memory=True`` (which need a real
  accelerator), ``torch.load(map_location="cuda")`` (every tensor of the file lands on the device) and
  ``torch.set_rng_state`` (which refuses a state on the device, as CUDA's does).

Gradients computed by autograd are plain CPU tensors; ``Tensor.grad`` tags a gradient whose tensor is tagged, as
CUDA would have produced it on the device. Autocast on ``cuda`` is disabled by torch itself on a CPU-only build,
so the simulation checks where tensors live, not the numerics of a GPU.

Use it in-process (``with SimulatedCuda():``, what the fixtures do) or for whole processes: with
``FEATINT_SIMULATED_CUDA=1`` and ``tests/simulated_cuda_site`` on ``PYTHONPATH``, every Python process (each
Snakemake job of a DAG) starts inside it (:func:`install`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Self

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

#: The environment variable that makes ``tests/simulated_cuda_site/sitecustomize.py`` install the simulation.
ENVIRONMENT_VARIABLE = "FEATINT_SIMULATED_CUDA"

_TAG = "_featint_simulated_cuda"
_BASE = torch._C.TensorBase.__dict__
CUDA0 = torch.device("cuda", 0)
MISMATCH = "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"


def is_tagged(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and bool(getattr(value, _TAG, False))


def _tag(value: Any) -> Any:
    for leaf in tree_flatten(value)[0]:
        if isinstance(leaf, torch.Tensor):
            setattr(leaf, _TAG, True)
    return value


def _untag(value: torch.Tensor) -> torch.Tensor:
    if getattr(value, _TAG, False):
        setattr(value, _TAG, False)
    return value


def _is_cuda_device(device: Any) -> bool:
    if device is None:
        return False
    if isinstance(device, int):  # a bare index means a CUDA device
        return True
    return torch.device(device).type == "cuda"


def _target_device(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool | None,
                                                                                                        tuple, dict]:
    """For ``Tensor.to``: (moves to cuda? / to cpu? / None: keeps the device, args with cpu instead of cuda)."""
    target: bool | None = None
    new_args = list(args)
    for i, value in enumerate(args[1:], start=1):
        if isinstance(value, (str, torch.device)) or (isinstance(value, int) and not isinstance(value, bool)):
            target = _is_cuda_device(value)
            if target:  # another device (cpu, meta) is taken as it is
                new_args[i] = "cpu"
        elif isinstance(value, torch.Tensor):  # .to(other): other's device and dtype
            target = is_tagged(value)
    new_kwargs = dict(kwargs)
    if "device" in kwargs and kwargs["device"] is not None:
        target = _is_cuda_device(kwargs["device"])
        if target:
            new_kwargs["device"] = "cpu"
    return target, tuple(new_args), new_kwargs


#: Ops that CUDA runs with a CPU operand: the copy between devices, indexing with CPU indices, ``new_*`` (which
#: copy their data onto self's device). Their result keeps self's device.
_MIXED_OK = {"copy_", "__getitem__", "__setitem__", "new_tensor", "new_zeros", "new_ones", "new_empty", "new_full",
             "_has_compatible_shallow_copy_type", "__get__", "__set__", "set_", "__repr__", "__format__",
             "__reduce_ex__", "__deepcopy__", "_make_subclass", "_rebuild_from_type_v2"}


_IN_PLACE_OPERATORS = {f"__i{op}__" for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or",
                                                  "xor", "lshift", "rshift", "matmul")}


class SimulatedCuda(TorchFunctionMode):
    """Tensors on ``cuda:0`` that compute on the CPU and raise where a real device would (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._patches: list[tuple[Any, str, Any]] = []
        self._rng: dict[int, torch.Tensor] = {}

    # -- the mode ---------------------------------------------------------------------------------------

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        descriptor = getattr(func, "__self__", None)
        if descriptor is _BASE["device"] and name == "__get__":
            return CUDA0 if is_tagged(args[0]) else func(*args)
        if descriptor is _BASE["is_cuda"] and name == "__get__":
            return is_tagged(args[0])
        if func is torch.Tensor.get_device:
            return 0 if is_tagged(args[0]) else -1
        if descriptor is _BASE["grad"] and name == "__get__":
            grad = func(*args)
            if grad is not None and is_tagged(args[0]):
                _tag(grad)
            return grad
        if descriptor is _BASE["data"] and name == "__get__":
            data = func(*args)
            return _tag(data) if is_tagged(args[0]) else _untag(data)
        if descriptor is _BASE["data"] and name == "__set__":
            func(*args)
            setattr(args[0], _TAG, is_tagged(args[1]))
            return None
        if descriptor is not None and name in ("__get__", "__set__"):  # other attributes (shape, .T, .mT, ...)
            out = func(*args, **kwargs)
            return _tag(out) if isinstance(out, torch.Tensor) and is_tagged(args[0]) else out
        if func is torch.Tensor.numpy or func is torch.Tensor.__array__:
            if is_tagged(args[0]):
                raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                                "tensor to host memory first.")
            return func(*args, **kwargs)
        if func is torch.Tensor.cuda:
            out = args[0].clone() if not is_tagged(args[0]) else args[0]
            return _tag(out)
        if func is torch.Tensor.cpu:
            return _untag(args[0].clone()) if is_tagged(args[0]) else args[0]
        if func is torch.Tensor.to:
            return self._to(func, args, kwargs)
        if kwargs.get("pin_memory"):  # pinned host memory needs a real accelerator; the data is the same
            kwargs["pin_memory"] = False
        if "device" in kwargs:  # a factory (zeros, arange, tensor, randn, empty_like(..., device=), ...)
            if _is_cuda_device(kwargs["device"]):
                generator = kwargs.get("generator")
                if generator is not None and generator.device.type != "cuda":
                    raise RuntimeError(
                        f"Expected a 'cuda' device type for generator but found '{generator.device.type}'")
                kwargs["device"] = "cpu"
                return _tag(func(*args, **kwargs))
            if kwargs["device"] is not None:  # an explicit CPU factory, whatever its inputs
                return _untag_all(func(*args, **kwargs))
        tensors = [leaf for leaf in tree_flatten((args, kwargs))[0] if isinstance(leaf, torch.Tensor)]
        on_cuda = [t for t in tensors if is_tagged(t)]
        if name in _MIXED_OK:
            out = func(*args, **kwargs)
            if args and isinstance(args[0], torch.Tensor) and is_tagged(args[0]) and out is not args[0]:
                _tag(out)
            return out
        if on_cuda:
            if any(not is_tagged(t) and t.dim() > 0 for t in tensors):
                raise RuntimeError(f"{MISMATCH} (simulated CUDA, in {name or func})")
            out = func(*args, **kwargs)
            in_place = (name.endswith("_") and not name.startswith("__")) or name in _IN_PLACE_OPERATORS
            if in_place and args and isinstance(args[0], torch.Tensor):
                return out  # in place on a cuda tensor: already tagged
            if name == "__iter__":  # rows of a device tensor are on the device
                return iter([_tag(row) for row in out])
            return _tag(out)
        return func(*args, **kwargs)

    def _to(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        source = args[0]
        target, new_args, new_kwargs = _target_device(func, args, kwargs)
        new_kwargs.pop("non_blocking", None)
        if target is None or target == is_tagged(source):
            out = func(*new_args, **new_kwargs)
            if is_tagged(source):
                _tag(out)
            return out
        out = func(*new_args, **new_kwargs)
        if out is source:
            out = source.clone() if not source.requires_grad else source.detach().clone().requires_grad_(True)
        return _tag(out) if target else _untag(out)

    # -- torch.cuda as a one-GPU machine answers it ------------------------------------------------------

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._patches.append((owner, name, owner.__dict__.get(name, getattr(owner, name, None))))
        setattr(owner, name, value)

    @staticmethod
    def _index(device: Any) -> int:
        if isinstance(device, int):
            return device
        return 0 if device is None else torch.device(device).index or 0

    def _get_rng_state(self, device: Any = "cuda") -> torch.Tensor:
        index = self._index(device)
        return self._rng.setdefault(index, torch.tensor(list(b"simulated-cuda-rng"), dtype=torch.uint8)).clone()

    def _set_rng_state(self, state: Any, device: Any = "cuda") -> None:
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or is_tagged(state):
            raise TypeError("RNG state must be a torch.ByteTensor")
        index = self._index(device)
        self._rng[index] = state.clone()

    def _properties(self, device: Any = None) -> Any:
        class Properties:
            name = "Simulated CUDA (CPU)"
            total_memory = 80 * 2**30
            uuid = "GPU-00000000-0000-0000-0000-000000000000"
            major, minor = 9, 0
            multi_processor_count = 132
        return Properties()

    def _install_patches(self) -> None:
        cuda = torch.cuda
        self._patch(cuda, "is_available", lambda: True)
        self._patch(cuda, "device_count", lambda: 1)
        self._patch(cuda, "current_device", lambda: 0)
        self._patch(cuda, "set_device", lambda device: None)
        self._patch(cuda, "is_initialized", lambda: True)
        self._patch(cuda, "_lazy_init", lambda: None)
        self._patch(cuda, "synchronize", lambda device=None: None)
        self._patch(cuda, "empty_cache", lambda: None)
        self._patch(cuda, "get_device_name", lambda device=None: "Simulated CUDA (CPU)")
        self._patch(cuda, "get_device_properties", self._properties)
        self._patch(cuda, "is_bf16_supported", lambda including_emulation=True: True)
        for counter in ("max_memory_allocated", "memory_allocated", "max_memory_reserved", "memory_reserved"):
            self._patch(cuda, counter, lambda device=None: 0)
        self._patch(cuda, "reset_peak_memory_stats", lambda device=None: None)
        self._patch(cuda, "get_rng_state", self._get_rng_state)
        self._patch(cuda, "set_rng_state", self._set_rng_state)
        self._patch(cuda, "get_rng_state_all", lambda: [self._get_rng_state(0)])
        self._patch(cuda, "set_rng_state_all", lambda states: [self._set_rng_state(s, i) for i, s in enumerate(states)])
        self._patch(cuda, "manual_seed", lambda seed: None)
        self._patch(cuda, "manual_seed_all", lambda seed: None)
        original_new = torch.nn.Parameter.__new__

        def parameter(cls: type, data: torch.Tensor | None = None, requires_grad: bool = True) -> Any:
            out = original_new(cls, data, requires_grad)
            return _tag(out) if is_tagged(data) else out

        self._patch(torch.nn.Parameter, "__new__", parameter)
        original_load, original_set_rng_state = torch.load, torch.set_rng_state

        def load(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
            """``map_location`` on cuda: every tensor of the file lands on the device (RNG states too)."""
            to_cuda = isinstance(map_location, (str, torch.device, int)) and _is_cuda_device(map_location)
            out = original_load(f, "cpu" if to_cuda else map_location, *args, **kwargs)
            return _tag(out) if to_cuda else out

        def set_rng_state(new_state: torch.Tensor) -> None:
            if is_tagged(new_state):
                raise TypeError("RNG state must be a torch.ByteTensor")
            original_set_rng_state(new_state)

        self._patch(torch, "load", load)
        self._patch(torch, "set_rng_state", set_rng_state)
        self._patch(torch.Tensor, "pin_memory", lambda self, device=None: self.clone())
        self._patch(torch.Tensor, "is_pinned", lambda self, device=None: False)

    def __enter__(self) -> Self:
        self._install_patches()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for owner, name, value in reversed(self._patches):
            setattr(owner, name, value)
        self._patches.clear()


def _untag_all(value: Any) -> Any:
    for leaf in tree_flatten(value)[0]:
        if isinstance(leaf, torch.Tensor):
            _untag(leaf)
    return value


@contextlib.contextmanager
def simulated_cuda() -> Iterator[SimulatedCuda]:
    """``with simulated_cuda() as mode:`` runs the block on the simulated device."""
    mode = SimulatedCuda()
    with mode:
        yield mode


def install() -> SimulatedCuda:
    """Enter the simulation for the rest of this process (its main thread; other threads run without it, so
    they must not touch device tensors, as featint's background readers do not)."""
    mode = SimulatedCuda()
    mode.__enter__()
    assert threading.current_thread() is threading.main_thread()
    return mode
