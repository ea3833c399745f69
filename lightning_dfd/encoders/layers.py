"""Layers and scale-safe normalisations the encoders share.

:class:`GroupNorm` is ``nn.GroupNorm`` (same parameters, same state-dict keys) whose
channels-last inputs get accurate statistics, and whose statistics never overflow.
PyTorch's CPU kernel for channels-last ``group_norm`` is far less accurate in float32 than the
contiguous one (max abs error 1.8e-3 against float64 on 20-channel 320x320 maps with mean 2 and
std 0.3, vs 1.4e-6 contiguous), which made SSFD with ``channels_last=True`` differ from its
reference by 1e-4 relative at 320x320 (``tests/test_group_norm.py``). Channels-last inputs are
normalised here by the contiguous kernel and converted back, keeping the layout for the next
convolution (the two copies cost less than the channels-last kernel itself on a CPU).

Scale safety. A normalisation that squares its input (a variance, an L2 norm) overflows in
float32 and bfloat16 once values pass ~1.8e19 (``normalization="none"`` on images scaled by
1e20): the variance becomes inf and the output silently becomes 0 (or the GroupNorm bias), a
finite wrong value. Every such normalisation here first divides its input by a power of two
(:func:`downscale_factor`: exactly 1, so bit-identical results, for magnitudes up to
:data:`SQUARE_SAFE_LIMIT`), which is exact in floating point and cancels in the normalised
output.

Example:
    >>> import torch
    >>> norm = GroupNorm(2, 4)
    >>> x = torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    >>> y = norm(x)
    >>> y.is_contiguous(memory_format=torch.channels_last), torch.allclose(y, norm(x.contiguous()), atol=1e-5)
    (True, True)
    >>> bool(torch.allclose(norm(x * 1e30), y, atol=1e-5))  # no overflow of the variance
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

#: Largest magnitude a scale-safe normalisation squares unscaled: 2**40 (~1.1e12). Larger values
#: are divided by a power of two into [2**40, 2**41), so squares (< 2**82) summed over up to 2**45
#: terms stay far below the float32 / bfloat16 maximum (~2**128), and an ``eps`` added to a
#: variance or norm of such values stays negligible, as it is for the unscaled values.
SQUARE_SAFE_LIMIT = 2.0**40


def power_of_two(magnitude: Tensor) -> Tensor:
    """``2 ** floor(log2(magnitude))`` elementwise (1 where ``magnitude`` is 0, inf or NaN).

    Dividing by a power of two is exact in floating point (outside the subnormal range), so a
    computation scaled by it rounds exactly as the unscaled one would. Computed in float32 (or
    float64 for float64 input); cast it to the dtype it divides.

    Example:
        >>> power_of_two(torch.tensor([1e20, 3.0, 0.75, 0.0])).tolist()
        [7.378697629483821e+19, 2.0, 0.5, 1.0]
    """
    m = magnitude.detach()
    m = m.to(torch.promote_types(m.dtype, torch.float32))
    ok = torch.isfinite(m) & (m > 0)
    one = torch.ones_like(m)
    return torch.where(ok, torch.exp2(torch.floor(torch.log2(torch.where(ok, m, one)))), one)


def downscale_factor(magnitude: Tensor, limit: float = SQUARE_SAFE_LIMIT) -> Tensor:
    """A power of two ``s >= 1`` with ``magnitude / s < 2 * limit``: exactly 1 where ``magnitude <= limit``.

    Args:
        magnitude: the largest absolute value of each slice to scale (any shape, not negative).
        limit: a power of two; magnitudes up to it are left alone.

    Example:
        >>> downscale_factor(torch.tensor([1.0, 2.0**40, 1e20, float("inf")])).tolist()
        [1.0, 1.0, 67108864.0, 1.0]
    """
    return power_of_two(torch.clamp_min(magnitude.detach() / limit, 1.0))


def max_magnitude(x: Tensor, dim: int | Sequence[int], keepdim: bool = True) -> Tensor:
    """The largest ``|x|`` over ``dim`` (no gradient; NaN where a slice holds NaN)."""
    x = x.detach()
    return torch.maximum(x.amax(dim=dim, keepdim=keepdim), -x.amin(dim=dim, keepdim=keepdim))


def sqrt_zero_safe(x: Tensor) -> Tensor:
    """``x.sqrt()`` (the same values) whose gradient is 0 instead of NaN where ``x == 0``.

    ``sqrt``'s gradient ``1 / (2 sqrt(x))`` is infinite at 0, and the chain rule multiplies it by
    the zero gradient of a sum of squares: NaN. Here the square root only sees positive values (or
    NaN), so zeros get the subgradient 0, as ``torch.linalg.vector_norm``'s backward gives them.

    Example:
        >>> x = torch.tensor([0.0, 4.0], requires_grad=True)
        >>> y = sqrt_zero_safe(x)
        >>> y.sum().backward()
        >>> y.tolist(), x.grad.tolist()
        ([0.0, 2.0], [0.0, 0.25])
    """
    zero = x == 0
    return torch.where(zero, torch.zeros_like(x), torch.where(zero, torch.ones_like(x), x).sqrt())


def unit_normalize(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Divide each position's feature vector by its L2 norm over channels plus ``eps``.

    ``lpips.normalize_tensor`` (LPIPS' and TimmFD's ``"unit"`` normalisation), bit for bit for
    features up to :data:`SQUARE_SAFE_LIMIT`, without its overflow beyond: there the squared norm
    becomes inf and every feature 0, so clearly different images scored exactly 0. Larger vectors
    are divided by a power of two first (exact), and so is ``eps`` (negligible there, as it is for
    the unscaled values). Non-finite features stay non-finite. The gradient is finite also where a
    position's features are all zero (ReLU taps on a dark background), where ``sqrt``'s own
    gradient ``1 / (2 sqrt(0))`` would turn it into NaN (:func:`sqrt_zero_safe`).

    Example:
        >>> x = torch.tensor([[3.0, 4.0]]).view(1, 2, 1, 1)
        >>> unit_normalize(x).flatten().tolist(), unit_normalize(x * 2.0**100).flatten().tolist()
        ([0.6000000238418579, 0.800000011920929], [0.6000000238418579, 0.800000011920929])
    """
    s = downscale_factor(max_magnitude(x, dim=1)).to(x.dtype)
    scaled = x / s
    norm = sqrt_zero_safe(scaled.pow(2).sum(dim=1, keepdim=True))
    # norm + eps / s, with eps added as lpips adds it (a Python scalar): bit-identical when s == 1
    return scaled / torch.add(norm, s.reciprocal(), alpha=eps)


def scale_down(x: Tensor, dim: int | Sequence[int]) -> Tensor:
    """``x`` divided by :func:`downscale_factor` of each slice's largest magnitude over ``dim``.

    Exact (powers of two), and ``x`` itself, bit for bit, wherever magnitudes are at most
    :data:`SQUARE_SAFE_LIMIT`. The input of a normalisation that is invariant to the scale of
    the slice (a LayerNorm over ``dim``) can be replaced by this without changing its output
    beyond the negligible ``eps``, but without the overflow of its variance.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [1e20, -3e20]])
        >>> bool(torch.equal(scale_down(x, 1)[0], x[0])), scale_down(x, 1)[1].abs().max().item() < 2.0**41
        (True, True)
    """
    return x / downscale_factor(max_magnitude(x, dim=dim)).to(x.dtype)


def scale_down_groups(x: Tensor, num_groups: int) -> Tensor:
    """:func:`scale_down` with one factor per (image, channel group) of ``(N, C, ...)`` input.

    The units GroupNorm normalises, so ``group_norm(scale_down_groups(x, g), g)`` equals
    ``group_norm(x, g)`` where the latter does not overflow.
    """
    n, c = x.shape[:2]
    per_group = c // num_groups
    grouped = x.unflatten(1, (num_groups, per_group))
    amax = max_magnitude(grouped, dim=tuple(range(2, grouped.ndim)), keepdim=False)
    s = downscale_factor(amax).to(x.dtype).repeat_interleave(per_group, dim=1)
    return x / s.view(n, c, *([1] * (x.ndim - 2)))


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that normalises channels-last input with the (accurate) contiguous kernel.

    Each (image, group) is first divided by the power of two :func:`downscale_factor` gives for
    its largest magnitude (1 up to :data:`SQUARE_SAFE_LIMIT`: unchanged), so the variance of huge
    activations does not overflow to inf (which maps the whole group to the bias).
    """

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = scale_down_groups(x, self.num_groups)
        if x.ndim != 4 or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
