"""SSFD pretraining on synthetic fastMRI data: the inpainting loss falls, the encoder exports."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_dfd import SSFD
from lightning_dfd.encoders.ssfd import zscore
from recon_models.data import FastMRIDataModule
from recon_models.data.synthetic import make_synthetic_dataset
from recon_models.export import export_ssfd_encoder
from recon_models.export import main as export_main
from recon_models.models.ssfd_unet import SSFDUNet
from recon_models.modules.ssfd_pretrain import SSFDPretrainModule


@pytest.fixture(scope="module")
def knee_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssfd_data") / "knee"
    # small images and patches keep this CPU-bound test short (the module defaults are 16x16)
    make_synthetic_dataset(root, volumes=4, slices=3, coils=2, shape=(32, 32),
                           recon_shape=(32, 32), seed=3)
    return root


def _trainer(tmp_path, steps: int, **kwargs) -> pl.Trainer:
    options = dict(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=tmp_path, check_val_every_n_epoch=1000,
    )
    return pl.Trainer(**{**options, **kwargs})


def test_pretraining_lowers_loss_and_exports(knee_root, tmp_path):
    pl.seed_everything(0)
    dm = FastMRIDataModule(data_path=str(knee_root), split=(0.75, 0.25, 0.0), sens_method="rss",
                           batch_size=4)
    out = tmp_path / "export" / "ssfd_encoder.ckpt"
    module = SSFDPretrainModule(lr=3e-3, patch_size=8, export_path=str(out), export_from="last",
                                log_images_every_n_epochs=0)
    trainer = _trainer(tmp_path, steps=8)
    before = trainer.validate(module, dm, verbose=False)[0]["val/loss"]
    trainer.fit(module, dm)
    after = trainer.validate(module, dm, verbose=False)[0]["val/loss"]
    assert after < 0.7 * before, (before, after)

    # fit end wrote the encoder in the published layout; SSFD loads it strictly and agrees with it
    assert module.exported_path == out and out.is_file()
    saved = torch.load(out, weights_only=True)
    assert list(saved) == ["model_state_dict"]
    assert set(saved["model_state_dict"]) == set(module.model.encoder.state_dict())
    metric = SSFD(weights=out, reduction="none")
    torch.manual_seed(0)
    preds, target = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    metric.update(preds, target)
    encoder = module.model.encoder.eval()
    with torch.no_grad():
        fp = encoder(zscore(preds), depth=4)[0][3]
        ft = encoder(zscore(target), depth=4)[0][3]
    torch.testing.assert_close(metric.compute(), (fp - ft).pow(2).mean(dim=(1, 2, 3)))

    # and the command-line export from a Lightning checkpoint gives the same file contents
    ckpt = tmp_path / "pretrain.ckpt"
    trainer.save_checkpoint(ckpt)
    cli_out = tmp_path / "cli" / "encoder.ckpt"
    assert export_main([str(ckpt), str(cli_out)]) == 0
    exported = torch.load(cli_out, weights_only=True)["model_state_dict"]
    for key, value in saved["model_state_dict"].items():
        assert torch.equal(exported[key], value), key
    SSFD(weights=cli_out)


def test_masked_inputs_and_shapes(knee_root):
    dm = FastMRIDataModule(data_path=str(knee_root), split=(0.75, 0.25, 0.0), sens_method="rss",
                           batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    module = SSFDPretrainModule(patch_size=8, mask_bank_size=3)
    images = module.images(batch)
    assert images.shape == (2, 1, 32, 32)
    torch.testing.assert_close(images.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    masks = module.masks(2, 32, 32)
    assert ((masks.mean(dim=(1, 2, 3)) - 0.5).abs() <= 0.03).all()
    val_a = module.validation_masks(batch, 32, 32)
    assert torch.equal(val_a, module.validation_masks(batch, 32, 32))  # fixed across epochs
    assert not torch.equal(val_a[0], val_a[1])


def test_export_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        export_ssfd_encoder(tmp_path / "missing.ckpt", tmp_path / "out.ckpt")
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"model.decoder.0.up.weight": torch.zeros(1)}}, bad)
    with pytest.raises(KeyError, match="model.encoder"):
        export_ssfd_encoder(bad, tmp_path / "out.ckpt")
    with pytest.raises(ValueError, match="export_from"):
        SSFDPretrainModule(export_from="first")


def test_export_never_replaces_its_own_checkpoint(tmp_path):
    from lightning_dfd.encoders.ssfd import SSFDEncoder

    state = {f"model.encoder.{k}": v for k, v in SSFDEncoder().state_dict().items()}
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {**state, "model.decoder.w": torch.ones(1)}, "epoch": 7}, checkpoint)
    before = checkpoint.read_bytes()
    (tmp_path / "link.ckpt").symlink_to(checkpoint)
    for out in (checkpoint, tmp_path / "sub" / ".." / "last.ckpt", tmp_path / "link.ckpt"):
        with pytest.raises(ValueError, match="would replace the training checkpoint"):
            export_ssfd_encoder(checkpoint, out)
    assert checkpoint.read_bytes() == before
    written = export_ssfd_encoder(checkpoint, tmp_path / "encoder.ckpt")
    assert set(torch.load(written, weights_only=True)) == {"model_state_dict"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.ckpt", "last.ckpt", "link.ckpt"]


def test_unet_encoder_is_the_ssfd_encoder():
    unet = SSFDUNet()
    keys = set(unet.encoder.state_dict())
    assert "encoder3.conv_block.GN.bias" in keys and "firstblock.conv1.weight" in keys
    assert unet(torch.zeros(1, 1, 48, 40)).shape == (1, 1, 48, 40)
