"""How an encoder pass runs: one immutable, validated set of options.

:class:`EncoderOptions` holds everything a pass over a DFD encoder depends on besides the network:
input normalisation, the NaN policy, chunking (``max_batch``), the encoder precision
(``"fp32"``, ``"bf16"`` or ``"auto"``), the channels-last layout and ``torch.compile``. It is
validated once, where it is built (a metric's ``__init__``, a functional call, a command line), and
handed to the pass; networks hold no options of their own, and nothing changes an options object
after it is built (``dataclasses.replace`` makes a new one).

``precision="auto"`` is decided once, when the options are built, by :func:`fast_bf16`: bf16 on a
CUDA GPU with bf16 support or on a CPU with AMX (``amx_bf16``) or AVX512-BF16 (``avx512_bf16``)
units, fp32 elsewhere; :attr:`EncoderOptions.precision_in_use` is the decision and
:attr:`EncoderOptions.precision_reason` says why (logged once per process and decision on the
``lightning_dfd`` logger). Tests force the decision with ``cpuinfo=``-style flags
(:func:`fast_bf16`) or by patching it, never by relying on the machine.

Example:
    >>> options = EncoderOptions(precision="bf16", max_batch=4)
    >>> options.precision_in_use, options.max_batch
    ('bf16', 4)
    >>> EncoderOptions(precision="fp16")
    Traceback (most recent call last):
    ...
    ValueError: Argument `precision` must be one of ('fp32', 'bf16', 'auto'), but got 'fp16'
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field

import torch

from lightning_dfd.preprocess import NAN_STRATEGIES, NORMALIZATIONS, check_choice

#: Encoder precisions a pass runs in.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
#: What a ``precision`` argument may say: a precision, or ``"auto"`` (decided by :func:`fast_bf16`).
PRECISION_CHOICES: tuple[str, ...] = (*PRECISIONS, "auto")
#: ``compile`` values: off, inductor with frozen weights (``True``), or a ``torch.compile`` backend
CompileArg = bool | str

_log = logging.getLogger("lightning_dfd")
_reported: set[tuple[str, str]] = set()


def check_compile(compile: CompileArg) -> CompileArg:
    """Validate a ``compile`` option: ``False``, ``True`` (inductor) or a backend name.

    Example:
        >>> check_compile(True), check_compile("aot_eager")
        (True, 'aot_eager')
    """
    if isinstance(compile, bool):
        return compile
    if isinstance(compile, str) and compile:
        import torch._dynamo

        backends = torch._dynamo.list_backends(exclude_tags=())
        if compile not in backends:
            raise ValueError(f"Argument `compile` must be True, False or a torch.compile backend "
                             f"({', '.join(sorted(backends))}), but got {compile!r}")
        return compile
    raise ValueError(f"Argument `compile` must be True, False or a torch.compile backend name, "
                     f"but got {compile!r}")


def check_max_batch(max_batch: object) -> int | None:
    """A positive integer or None.

    Example:
        >>> check_max_batch(4), check_max_batch(None)
        (4, None)
    """
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int)
                                  or max_batch < 1):
        raise ValueError(f"Argument `max_batch` must be a positive integer or None, but got {max_batch!r}")
    return max_batch


FAST_BF16_ENV = "LIGHTNING_DFD_FAST_BF16"


def fast_bf16(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Whether this machine runs bf16 convolutions fast, and why: ``(answer, reason)``.

    True on a CUDA GPU with bf16 support, or on a CPU with AMX (``amx_bf16``) or AVX512-BF16
    (``avx512_bf16``) instructions (read from ``/proc/cpuinfo``, or from ``cpuinfo`` if given, in
    which case no GPU is looked for). The environment variable ``LIGHTNING_DFD_FAST_BF16=1`` / ``0``
    overrides the detection (reproducible runs across machines; the test suite sets it).

    Example:
        >>> fast_bf16("flags : fpu avx512f amx_bf16")
        (True, 'CPU has amx_bf16')
        >>> fast_bf16("flags : fpu avx512f avx512_bf16")
        (True, 'CPU has avx512_bf16')
        >>> fast_bf16("flags : fpu avx2")[0]
        False
    """
    forced = os.environ.get(FAST_BF16_ENV, "") if cpuinfo is None else ""
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"{FAST_BF16_ENV} must be 0 or 1, but got {forced!r}")
        return forced == "1", f"{FAST_BF16_ENV}={forced}"
    if cpuinfo is None and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return True, f"GPU {torch.cuda.get_device_name()} supports bf16"
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as handle:
                cpuinfo = handle.read()
        except OSError:
            cpuinfo = ""
    flags = cpuinfo.split()
    for flag in ("amx_bf16", "avx512_bf16"):
        if flag in flags:
            return True, f"CPU has {flag}"
    return False, "no bf16 units found (no CUDA bf16, CPU without amx_bf16 / avx512_bf16)"


def resolve_precision(precision: str) -> tuple[str, str]:
    """``"fp32"``, ``"bf16"`` or ``"auto"`` (bf16 where :func:`fast_bf16`) -> ``(precision, reason)``.

    Example:
        >>> resolve_precision("fp32")
        ('fp32', 'asked for')
    """
    check_choice("precision", precision, PRECISION_CHOICES)
    if precision == "auto":
        fast, reason = fast_bf16()
        return ("bf16" if fast else "fp32"), f"auto: {reason}"
    return precision, "asked for"


@dataclass(frozen=True)
class EncoderOptions:
    """Everything an encoder pass depends on besides the network; validated when built.

    Attributes:
        normalization: ``"minmax"`` (each image by its own min/max), ``"target"`` (both images of
            a pair by the target's) or ``"none"``.
        nan_strategy: non-finite predictions (and non-finite results of finite inputs):
            ``"error"``, ``"ignore"`` (skip those images) or ``"propagate"``.
        max_batch: at most this many image pairs per encoder pass (None: all at once).
        precision: as asked: ``"fp32"``, ``"bf16"`` (the encoder under ``torch.autocast(bfloat16)``,
            features returned in float32, distances in fp32) or ``"auto"``.
        channels_last: run the encoder in channels-last layout (same values up to float rounding).
        compile: ``torch.compile`` the encoder for gradient-free passes: False, True (inductor
            with frozen weights) or a backend name.
        precision_in_use: the precision the pass runs in (``"auto"`` decided; derived).
        precision_reason: why (``"asked for"``, or the :func:`fast_bf16` reason; derived).
    """

    normalization: str = "minmax"
    nan_strategy: str = "error"
    max_batch: int | None = None
    precision: str = "fp32"
    channels_last: bool = False
    compile: CompileArg = False
    precision_in_use: str = field(init=False, compare=False)
    precision_reason: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        check_choice("nan_strategy", self.nan_strategy, NAN_STRATEGIES)
        check_max_batch(self.max_batch)
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"Argument `channels_last` must be True or False, but got "
                             f"{self.channels_last!r}")
        check_compile(self.compile)
        in_use, reason = resolve_precision(self.precision)
        object.__setattr__(self, "precision_in_use", in_use)
        object.__setattr__(self, "precision_reason", reason)
        if self.precision == "auto" and (in_use, reason) not in _reported:
            _reported.add((in_use, reason))
            _log.info("precision='auto' runs DFD encoders in %s (%s)", in_use, reason)

    def replace(self, **changes: object) -> EncoderOptions:
        """A new, validated options object with ``changes`` (this one is left as it is).

        Example:
            >>> EncoderOptions().replace(precision="bf16").precision_in_use
            'bf16'
        """
        return dataclasses.replace(self, **changes)

    @property
    def key(self) -> tuple:
        """What the features of a pass depend on, besides the network and the image.

        Normalisation, precision in use, layout and compilation (compiled rounding differs);
        not the NaN policy or ``max_batch`` (they decide which images are encoded and how many
        at once, never their features).
        """
        return (self.normalization, self.precision_in_use, self.channels_last, self.compile)

    def describe(self) -> str:
        """One line for logs and ``extra_repr``.

        Example:
            >>> EncoderOptions(max_batch=4).describe()
            "normalization='minmax', nan_strategy='error', max_batch=4, precision='fp32'"
        """
        text = (f"normalization={self.normalization!r}, nan_strategy={self.nan_strategy!r}, "
                f"max_batch={self.max_batch}, precision={self.precision_in_use!r}")
        if self.precision == "auto":
            text += " (auto)"
        if self.channels_last:
            text += ", channels_last=True"
        if self.compile:
            text += f", compile={self.compile!r}"
        return text
