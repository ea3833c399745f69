"""The live identity of an encoder: what its weights are *now*, computed in one place.

Every derived thing that depends on an encoder's weights — the target-feature cache namespace,
the compiled graph (weights frozen into it), the key under which metrics share one encoder pass,
the fingerprint of a metric — reads :func:`weights_digest` at the moment of use, never a value
remembered from construction. So ``load_state_dict``, an in-place op (``weight.mul_(2)``,
``copy_``), ``param.data = other``, ``setattr`` of a new ``Parameter`` or buffer, and ``.to()``
round trips are all seen at the next update.

Checking is cheap: :func:`state_token` reads every parameter's and buffer's name, object, storage
pointer, in-place version counter, device, dtype, shape and strides (no bytes), and the BLAKE2
digest of the bytes is recomputed only when that token changed (a ``.to("cpu")`` round trip
changes the token, recomputes, and finds the same digest: cached features stay valid). Not seen:
writes through ``param.data.mul_()`` (``.data`` has a version counter of its own) or through
other aliases that bypass autograd's version counting; use ``with torch.no_grad():
param.mul_(...)`` or ``load_state_dict``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Linear(2, 2)
    >>> before = weights_digest(net)
    >>> with torch.no_grad():
    ...     _ = net.weight.mul_(2)
    >>> weights_digest(net) != before
    True
"""

from __future__ import annotations

import hashlib
import weakref

import torch
from torch import Tensor, nn

__all__ = ["state_token", "weights_digest"]

#: module -> {(skip, only): (token, digest)}: digests recomputed only when the token changes
_memo: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[tuple, str]]] = weakref.WeakKeyDictionary()


def _selected(module: nn.Module, skip: tuple[str, ...], only: tuple[str, ...] | None):
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        if (skip and name.startswith(skip)) or (only is not None and not name.startswith(only)):
            continue
        yield name, tensor


def _version(tensor: Tensor) -> int:
    try:
        return tensor._version
    except RuntimeError:  # inference tensors keep no version counter (and cannot change)
        return -1


def state_token(module: nn.Module, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> tuple:
    """Names, objects, storage pointers, versions, devices, dtypes, shapes and strides: no bytes.

    Equal tokens mean the same tensors, unmodified through autograd-visible writes.

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(2, 2)
        >>> state_token(net) == state_token(net)
        True
    """
    return tuple((name, id(t), t.data_ptr(), _version(t), t.device, t.dtype, tuple(t.shape), t.stride())
                 for name, t in _selected(module, skip, only))


def weights_digest(module: nn.Module, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> str:
    """A BLAKE2 digest (16 hex characters) of ``module``'s parameters and buffers, as they are now.

    Args:
        module: the network.
        skip: leave out names starting with one of these prefixes (e.g. distance-only heads).
        only: if given, digest only names starting with one of these prefixes.

    The bytes are hashed again only when :func:`state_token` changed since the last call.
    """
    token = state_token(module, skip, only)
    per_module = _memo.setdefault(module, {})
    found = per_module.get((skip, only))
    if found is not None and found[0] == token:
        return found[1]
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in _selected(module, skip, only):
        data = tensor.detach()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
    value = digest.hexdigest()
    per_module[(skip, only)] = (token, value)
    return value
