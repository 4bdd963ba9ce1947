"""The one home of every private torch / PEFT / ``enum`` API the tuner relies on.

Each name here is an implementation detail of a dependency that has no public equivalent
(yet). Keeping them in one module makes an upgrade a one-file review, and
``tests/tuner/test_compat.py`` fails as soon as one of them disappears or changes
shape, instead of a user meeting an ``AttributeError`` deep inside a training run.

=======================================  ==========================================
private API                              used for
=======================================  ==========================================
``peft.tuners._buffer_dict.BufferDict``  the persistent κ buffers of fixed experts,
                                         saved and loaded with the adapter
``peft.tuners.tuners_utils.``            the in/out features of ``nn.Linear``,
``_get_in_out_features``                 transformers ``Conv1D`` and quantised layers
``Enum._member_map_`` and friends        adding ``MOSELORA`` to PEFT's closed
                                         ``PeftType`` enum
``Tensor._version``                      the in-place version counter: a layer's
                                         inference cache is valid while its
                                         weights' versions are unchanged
``Module._modules``, ``._parameters``,   an adapter's weights read per decoding call
``._buffers`` (``ParameterDict`` and     without ``nn.Module.__getattr__`` (about a
``BufferDict`` keep a ``str`` key as     microsecond per lookup, a dozen per call)
the attribute name)
=======================================  ==========================================
"""

from __future__ import annotations

import enum

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import _get_in_out_features

__all__ = [
    "BufferDict",
    "adapter_dropout",
    "adapter_tensors",
    "extend_str_enum",
    "in_out_features",
    "tensor_versions",
]


def in_out_features(layer: torch.nn.Module) -> tuple[int | None, int | None]:
    """``(in_features, out_features)`` of a base layer as PEFT's own tuners read them
    (``nn.Linear``, transformers ``Conv1D``, bitsandbytes/GPTQ layers); ``None`` if unknown."""
    return _get_in_out_features(layer)


def extend_str_enum(enum_cls: type[enum.Enum], name: str, value: str) -> enum.Enum:
    """Add the member ``name = value`` to a ``(str, Enum)`` class, or return the existing one.

    PEFT's ``PeftType`` is a closed ``str`` enum and ``register_peft_method`` only accepts
    names that are already members. This uses only the member tables (``_member_map_``,
    ``_value2member_map_``, ``_member_names_``) that ``Enum`` keeps on every CPython from
    3.8 to 3.13.
    """
    if name in enum_cls.__members__:
        return enum_cls[name]
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    # EnumType.__setattr__ refuses to (re)bind member names; the class dict is ours to set
    type.__setattr__(enum_cls, name, member)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    return member


def tensor_versions(*tensors: torch.Tensor | None) -> tuple:
    """An identity of the tensors' current values (``None`` for ``None``): each one's storage
    address and in-place version counter, which every in-place op bumps (an optimizer step,
    ``copy_``, ``load_state_dict``); a new tensor (``.to()``, ``param.data = …``) has a new
    address. Plain tensors with data only."""
    return tuple(None if t is None else (t.data_ptr(), t._version) for t in tensors)


def adapter_tensors(layer: torch.nn.Module, name: str) -> tuple:
    """``(A, W_g, B_cat, κ learnable or None, κ fixed, ρ or None)`` of a MoSELoRA layer's
    adapter ``name``: the tensors ``layer.moselora_A[name].weight``,
    ``layer.moselora_router[name].weight``, ``layer.moselora_B[name].weight``,
    ``layer.moselora_k[name]``, ``layer.moselora_k_fixed[name]`` and
    ``layer.moselora_log_scale[name]`` name, read from the modules' own dictionaries."""
    mods = layer._modules
    k = mods["moselora_k"]._parameters.get(name)
    rho = mods["moselora_log_scale"]._parameters.get(name)
    return (
        mods["moselora_A"]._modules[name]._parameters["weight"],
        mods["moselora_router"]._modules[name]._parameters["weight"],
        mods["moselora_B"]._modules[name]._parameters["weight"],
        k,
        mods["moselora_k_fixed"]._buffers[name],
        rho,
    )


def adapter_dropout(layer: torch.nn.Module, name: str) -> torch.nn.Module:
    """``layer.moselora_dropout[name]``, read from the modules' own dictionaries."""
    return layer._modules["moselora_dropout"]._modules[name]
