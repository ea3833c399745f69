"""DFDLoss and the DFD terms of ReconModule's loss: gradients, sharing, warnings, DDP."""

from __future__ import annotations

import warnings

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import default_collate

from lightning_dfd import DFDLoss, build_metric
from lightning_dfd.catalog import DFDS
from lightning_dfd.encoders.layers import unit_normalize
from lightning_dfd.losses import sharing_encoder
from recon_models.modules import ReconModule
from tests.ddp import run_ddp

SMALL_UNET = {"chans": 4, "num_pool_layers": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _catalog_kwargs(name: str, tmp_path) -> dict:
    """Random-weight arguments that build every catalog DFD offline."""
    if name == "timm_fd":
        pytest.importorskip("timm")
        return {"model_name": "resnet18", "layers": (1, 2), "distance": "unit"}
    if name == "hf_fd":
        pytest.importorskip("transformers")
        from tests.hf_models import save_tiny

        return {"model_name_or_path": str(save_tiny("dinov2", tmp_path / "dinov2")), "distance": "unit"}
    return {}


# ---------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", ["ssfd", "lpips_alex", "dists"])
def test_directional_derivative_equals_central_difference(name):
    torch.manual_seed(0)
    loss_fn = DFDLoss(name, weights="random", precision="fp32")
    loss_fn.network.double()  # float64 end to end: the pass casts images to the weights' dtype
    target = torch.rand(2, 32, 32, dtype=torch.float64)
    preds = (target + 0.2 * torch.randn_like(target)).requires_grad_()
    direction = torch.randn_like(target)
    loss = loss_fn(preds, target)
    assert loss.dtype == torch.float64
    (grad,) = torch.autograd.grad(loss, preds)
    analytic = float((grad * direction).sum())
    h = 1e-5
    with torch.no_grad():
        forward, backward = loss_fn(preds + h * direction, target), loss_fn(preds - h * direction, target)
    numeric = float((forward - backward) / (2 * h))
    assert abs(analytic) > 1e-8
    assert analytic == pytest.approx(numeric, rel=0.05)


def test_loss_decreases_on_a_tiny_overfit_problem():
    torch.manual_seed(0)
    loss_fn = DFDLoss("ssfd", weights="random", precision="fp32", layers=("block2_relu1",))
    target = torch.rand(1, 32, 32)
    preds = nn.Parameter(torch.rand(1, 32, 32))
    optimizer = torch.optim.Adam([preds], lr=0.05)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = loss_fn(preds, target)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is None for p in loss_fn.parameters())  # the encoder never gets gradients
    assert not any(p.requires_grad for p in loss_fn.parameters())
    assert not any(m.training for m in loss_fn.network.modules())


@pytest.mark.parametrize("bf16", ["0", "1"])
@pytest.mark.parametrize("name", DFDS)
def test_gradient_is_finite_where_preds_equal_target(name, bf16, tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_DFD_FAST_BF16", bf16)  # what precision="auto" decides, forced
    torch.manual_seed(0)
    loss_fn = DFDLoss(name, weights="random", **_catalog_kwargs(name, tmp_path))
    assert loss_fn.metric.precision == ("bf16" if bf16 == "1" else "fp32")
    target = torch.rand(2, 1, 64, 64)
    target[:, :, :32] = 0  # a dark half: constant regions, ReLU features that vanish
    preds = target.clone().requires_grad_()
    loss = loss_fn(preds, target)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-5
    assert bool(torch.isfinite(preds.grad).all())


def test_unit_normalize_gradient_is_finite_for_zero_features():
    # sqrt(sum x^2) at x == 0: the plain sqrt gradient is 0 * inf = NaN (the old code)
    a = torch.zeros(1, 3, 2, 2, requires_grad=True)
    b = torch.rand(1, 3, 2, 2)
    (unit_normalize(a) - unit_normalize(b)).pow(2).sum().backward()
    assert bool(torch.isfinite(a.grad).all())


def test_reduction_and_errors():
    torch.manual_seed(0)
    metric = build_metric("resnet_fd", weights="random")
    loss_fn = DFDLoss(metric, reduction="none")
    p, t = torch.rand(3, 32, 32), torch.rand(3, 32, 32)
    values = loss_fn(p, t)
    assert values.shape == (3,)
    assert torch.allclose(DFDLoss(metric)(p, t), values.mean())
    assert torch.allclose(DFDLoss(metric, reduction="sum")(p, t), values.sum())
    assert metric.update_count == 0  # stateless
    shared = sharing_encoder(metric, precision="bf16")  # same weights, bf16 autocast
    assert shared.network is metric.network and shared.precision == "bf16" and metric.precision == "fp32"
    assert torch.allclose(DFDLoss(shared)(p, t), values.mean(), rtol=0.05)
    with pytest.raises(ValueError, match="must name a deep feature distance"):
        DFDLoss("psnr")
    with pytest.raises(TypeError, match="only with a metric name"):
        DFDLoss(metric, weights="random")
    with pytest.raises(ValueError, match="reduction"):
        DFDLoss(metric, reduction="max")


# ---------------------------------------------------------------------------------- ReconModule
def _batch(n: int = 2, size: int = 16):
    from tests.test_recon_module import _volumes

    samples = _volumes([(size, size)], slices=n)
    return default_collate(samples)


def _module(**kwargs) -> ReconModule:
    torch.manual_seed(0)
    defaults = {"dfds": {"ssfd": {"weights": "random", "layers": ("block2_relu1",)}},
                "loss": {"l1": 1.0, "ssfd": 0.1}}
    return ReconModule("unet", SMALL_UNET, **{**defaults, **kwargs})


def _parameter_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())  # shared ones once


def test_loss_dfd_shares_the_validation_encoder():
    module = _module(dfds={"lpips_vgg": {"weights": "random"}}, loss={"l1": 1.0, "lpips_vgg": 0.1})
    validation = dict(module.val_metrics.items(keep_base=True, copy_state=False))["lpips_vgg"]
    loss_metric = module.loss_dfds["lpips_vgg"].metric
    assert loss_metric.network is validation.network
    weight = next(validation.network.parameters())
    assert next(loss_metric.network.parameters()).data_ptr() == weight.data_ptr()
    assert loss_metric.precision == "fp32" and loss_metric is not validation  # its own options
    # one copy in memory; a separately built loss would hold a second one
    separate = DFDLoss("lpips_vgg", weights="random")
    shared_bytes = _parameter_bytes(module)
    separate_bytes = shared_bytes + _parameter_bytes(separate)
    encoder_bytes = _parameter_bytes(validation.network)
    assert separate_bytes - shared_bytes == encoder_bytes > 50e6
    print(f"\nparameter bytes: shared {shared_bytes / 2**20:.1f} MiB, separate "
          f"{separate_bytes / 2**20:.1f} MiB (encoder {encoder_bytes / 2**20:.1f} MiB)")
    # checkpoints hold no encoder weights, load strictly, and .to() keeps the sharing
    state = module.state_dict()
    assert all(key.startswith("network.") for key in state)
    module.load_state_dict(state, strict=True)
    module.to("cpu")
    assert module.loss_dfds["lpips_vgg"].network is validation.network
    assert not any(p.requires_grad for p in validation.network.parameters())
    assert all(p.requires_grad for p in module.network.parameters())


def test_loss_terms_logged_and_backward_compatible():
    module = _module()
    assert module.loss_weights == {"l1": 1.0, "ssfd": 0.1} and module.loss_name == "image_l1"
    batch = _batch()
    pred = module(batch.masked_kspace, batch.mask, batch.maps)
    terms = module.loss_terms(pred, batch)
    assert set(terms) == {"l1", "ssfd"}
    assert torch.allclose(terms["l1"], module.loss_fn(pred, batch.target, batch.maps))
    metric = build_metric("ssfd", weights="random", layers=("block2_relu1",))
    expected = metric.score(pred.abs(), batch.target.abs()).mean()  # crop == image size here
    assert torch.allclose(terms["ssfd"], expected, rtol=1e-5, atol=1e-8)
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    loss = module.training_step(batch, 0)
    assert set(logged) == {"train/loss", "train/loss_l1", "train/loss_ssfd"}
    assert torch.allclose(loss, terms["l1"] + 0.1 * terms["ssfd"])
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in module.network.parameters() if p.grad is not None)
    # the former forms still work
    assert ReconModule("unet", SMALL_UNET, loss="kspace_l1", dfds={}).loss_weights == {"kspace_l1": 1.0}
    assert ReconModule("unet", SMALL_UNET, dfds={}).loss_name == "image_l1"
    with pytest.raises(ValueError, match="unknown term 'psnr'"):
        ReconModule("unet", SMALL_UNET, loss={"psnr": 1.0}, dfds={})
    with pytest.raises(ValueError, match="finite number >= 0"):
        ReconModule("unet", SMALL_UNET, loss={"l1": -1.0}, dfds={})


@pytest.mark.parametrize("monitor,warns", [("val/ssfd", True), ("val/psnr", False)])
def test_warning_when_the_loss_dfd_is_monitored(monitor, warns, tmp_path):
    module = _module()
    callbacks = [EarlyStopping(monitor=monitor), ModelCheckpoint(dirpath=tmp_path, monitor=monitor)]
    trainer = Trainer(callbacks=callbacks, logger=False, default_root_dir=tmp_path,
                      enable_progress_bar=False, enable_model_summary=False)
    module.trainer = trainer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.on_fit_start()
    found = [w for w in caught if "which the training loss optimises" in str(w.message)]
    assert bool(found) == warns
    if warns:
        assert "EarlyStopping and ModelCheckpoint monitor val/ssfd" in str(found[0].message)


class _TrainStep(nn.Module):
    """What Lightning's DDP wrapper does: forward runs the loss of the module's training step."""

    def __init__(self, module: ReconModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch) -> torch.Tensor:
        pred = self.module(batch.masked_kspace, batch.mask, batch.maps)
        terms = self.module.loss_terms(pred, batch)
        return sum(self.module.loss_weights[name] * value for name, value in terms.items())


def _gradients(module: ReconModule) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.network.parameters()]


def _ddp_step(rank: int, world_size: int) -> list[torch.Tensor]:
    from torch.nn.parallel import DistributedDataParallel

    module = _module()
    batch = _batch(n=4)
    half = type(batch)(*(x[rank::world_size] if isinstance(x, torch.Tensor) else x[rank::world_size]
                         for x in batch))
    model = DistributedDataParallel(_TrainStep(module))
    model(half).backward()
    return _gradients(module)


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_training_step_equals_one(tmp_path):
    module = _module()
    _TrainStep(module)(_batch(n=4)).backward()
    single = _gradients(module)
    results = run_ddp(_ddp_step, tmp_path=tmp_path)
    for ranked in results:
        for a, b in zip(ranked, single, strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_shipped_dfdloss_config_parses(tmp_path, monkeypatch, capsys):
    import yaml

    from recon_models.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "unet_dfdloss", "--print_config"])
    assert exit_info.value.code in (0, None)
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["loss"] == {"l1": 1.0, "ssfd": 0.1} and "ssfd" in model["dfds"]
