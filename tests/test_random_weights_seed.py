"""``weights="random"`` encoders are built under a fixed seed: equal in every run and process."""

from __future__ import annotations

import pytest
import torch

from lightning_dfd import weights as W
from lightning_dfd.metrics import build_metric


def _state(metric) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in metric.network.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("name", "options"), [("lpips_alex", {}), ("dists", {}), ("resnet_fd", {}),
                                               ("ssfd", {}), ("vaefd", {}),
                                               ("timm_fd", {"model_name": "resnet18", "layers": (1,)})])
def test_random_weights_do_not_depend_on_the_global_rng_and_leave_it_alone(name, options):
    torch.manual_seed(1)
    first = _state(build_metric(name, weights="random", **options))
    after_first = torch.rand(3)
    torch.manual_seed(2)  # another rank / another run: another global RNG state
    second = _state(build_metric(name, weights="random", **options))
    assert _equal(first, second)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after_first)  # the caller's random stream was not consumed
    with W.seeded_random_weights(5):
        other = _state(build_metric(name, weights="random", **options))
    assert not _equal(first, other)


def test_the_library_seed_can_be_set_and_is_checked():
    lpips = build_metric("lpips_alex", weights="random")
    try:
        W.set_random_weights_seed(3)
        assert W.random_weights_seed() == 3
        three = _state(build_metric("lpips_alex", weights="random"))
        with W.seeded_random_weights(3):
            assert _equal(three, _state(build_metric("lpips_alex", weights="random")))
        assert not _equal(three, _state(lpips))
    finally:
        W.set_random_weights_seed()
    assert W.random_weights_seed() == W.DEFAULT_RANDOM_SEED == 0
    assert _equal(_state(lpips), _state(build_metric("lpips_alex", weights="random")))
    for bad in (-1, 1.5, True, "0"):
        with pytest.raises(ValueError, match="random-weights seed must be an int"):
            W.set_random_weights_seed(bad)
