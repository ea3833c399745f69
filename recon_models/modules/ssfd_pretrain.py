"""SSFD pretraining: a UNet learns to inpaint MR images whose patches were zero-filled.

Each fully sampled reference image of a :class:`~recon_models.data.sample.ReconSample` batch is
cropped to its ``reconSpace`` (where the metrics are computed), turned into a magnitude image and
z-scored (exactly the SSFD metric's input). Non-overlapping 16x16 patches covering 50 % of it are
zero-filled (Poisson-disc placement, :mod:`recon_models.data.inpainting_masks`) and the
:class:`~recon_models.models.ssfd_unet.SSFDUNet` restores the image under an L2 loss.

On fit end the encoder is written in the published SSFD layout (``{"model_state_dict": ...}``),
which ``lightning_dfd.SSFD(weights=path)`` loads with ``strict=True``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics import MeanMetric

from lightning_dfd.encoders.ssfd import zscore
from recon_models.checkpoints import reconcile_hparams
from recon_models.data.inpainting_masks import PatchMaskSampler, poisson_disc_patch_mask
from recon_models.data.sample import ReconSample
from recon_models.export import encoder_state_from_module_state, export_ssfd_encoder, save_ssfd_encoder
from recon_models.models.ssfd_unet import SSFDUNet
from recon_models.modules.base import center_crop, image_grid

log = logging.getLogger(__name__)

#: Offset added to ``sample_id`` to seed validation masks (distinct from training seeds).
VAL_MASK_SEED = 7_919
DEFAULT_EXPORT_NAME = "ssfd_encoder.ckpt"


class SSFDPretrainModule(LightningModule):
    """Masked-inpainting pretraining of the SSFD encoder.

    Args:
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        patch_size: side of the zero-filled square patches.
        coverage: fraction of each image covered by patches.
        mask_bank_size: 0 draws fresh masks every step; ``n > 0`` draws ``n`` masks per image size
            once and serves them under random 90-degree rotations / flips (cheaper at large sizes).
        crop_to_recon_size: crop references to ``crop_size`` (``reconSpace``) before masking.
        export_path: where to write the encoder on fit end; None writes
            ``<log_dir>/ssfd_encoder.ckpt`` (or ``<default_root_dir>/...`` without a logger).
        export_from: ``"best"`` exports the best checkpoint of the ``ModelCheckpoint`` callback
            when there is one, ``"last"`` the weights at the end of fit.
        seed: seed of the training masks (each process adds its global rank).
        log_images_every_n_epochs: image grid (masked / restored / target) every n epochs (0: off).

    Example:
        >>> module = SSFDPretrainModule(patch_size=8)
        >>> sum(p.numel() for p in module.model.encoder.parameters())
        1842260
    """

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        patch_size: int = 16,
        coverage: float = 0.5,
        mask_bank_size: int = 0,
        crop_to_recon_size: bool = True,
        export_path: str | None = None,
        export_from: str = "best",
        seed: int = 0,
        log_images_every_n_epochs: int = 1,
    ) -> None:
        super().__init__()
        if export_from not in ("best", "last"):
            raise ValueError(
                f"Argument `export_from` must be one of ('best', 'last'), but got {export_from!r}"
            )
        if not 0.0 < coverage < 1.0:
            raise ValueError(f"Argument `coverage` must be in (0, 1), but got {coverage}")
        self.save_hyperparameters()
        self.model = SSFDUNet()
        self.masks = PatchMaskSampler(patch_size, coverage, mask_bank_size, seed)
        # Means over every validation image of every process (torchmetrics syncs them).
        self.val_loss = MeanMetric()
        self.val_masked_mse = MeanMetric()
        self.exported_path: Path | None = None

    # ----------------------------------------------------------------------------------- data
    def images(self, batch: ReconSample) -> Tensor:
        """Reference images of a batch as ``(B, 1, H, W)`` z-scored magnitudes."""
        target = batch.target
        if target.ndim != 3 or not target.is_complex():
            raise ValueError(
                f"`batch.target` must be complex (B, H, W), but got {target.dtype} "
                f"{tuple(target.shape)}"
            )
        if self.hparams.crop_to_recon_size:
            sizes = batch.crop_size.reshape(-1, 2)
            if not bool((sizes == sizes[0]).all()):
                raise ValueError(
                    "references of one batch have different crop sizes "
                    f"{sizes.unique(dim=0).tolist()}; use batch_size=1 or crop_to_recon_size=False"
                )
            target = center_crop(target, sizes[0].tolist())
        return zscore(target.abs().unsqueeze(1).float())

    def validation_masks(self, batch: ReconSample, height: int, width: int) -> Tensor:
        """One fixed mask per sample (seeded by ``sample_id``): the same in every epoch."""
        p = self.hparams
        masks = [
            poisson_disc_patch_mask(height, width, p.patch_size, p.coverage,
                                    seed=VAL_MASK_SEED + int(sid))
            for sid in batch.sample_id.reshape(-1).tolist()
        ]
        return torch.stack(masks).unsqueeze(1).to(self.device)

    # -------------------------------------------------------------------------------- steps
    def forward(self, images: Tensor, masks: Tensor) -> Tensor:
        """Restore ``(B, 1, H, W)`` images whose ``masks == 1`` pixels are zero-filled."""
        return self.model(images * (1.0 - masks))

    def training_step(self, batch: ReconSample, batch_idx: int) -> Tensor:
        """L2 between the restored and the reference image."""
        images = self.images(batch)
        masks = self.masks(images.shape[0], images.shape[-2], images.shape[-1], self.device)
        loss = F.mse_loss(self(images, masks), images)
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def validation_step(self, batch: ReconSample, batch_idx: int) -> None:
        """Per-image L2 on the whole image (as trained) and on the patches only."""
        images = self.images(batch)
        masks = self.validation_masks(batch, images.shape[-2], images.shape[-1])
        restored = self(images, masks)
        squared = (restored - images) ** 2
        self.val_loss.update(squared.flatten(1).mean(dim=1))
        masked = (squared * masks).flatten(1).sum(dim=1) / masks.flatten(1).sum(dim=1).clamp_min(1)
        self.val_masked_mse.update(masked)
        if self._should_log_images(batch_idx):
            self._log_images(images[0, 0], masks[0, 0], restored[0, 0])

    def on_validation_epoch_end(self) -> None:
        """Log ``val/loss`` and ``val/masked_mse``: means over all validation images."""
        self.log("val/loss", self.val_loss.compute())
        self.log("val/masked_mse", self.val_masked_mse.compute())
        self.val_loss.reset()
        self.val_masked_mse.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the whole UNet."""
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    # ------------------------------------------------------------------------- lifecycle
    def on_fit_start(self) -> None:
        """Give every process its own stream of training masks."""
        self.masks.reseed(np.random.SeedSequence([self.hparams.seed, self.global_rank]))

    def on_fit_end(self) -> None:
        """Write the encoder in the published SSFD layout (global rank 0 only)."""
        if self.trainer.is_global_zero:
            self.exported_path = self.export_encoder()
        self.trainer.strategy.barrier("ssfd_export")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoint vs command line: see :func:`recon_models.checkpoints.reconcile_hparams`."""
        reconcile_hparams(self, checkpoint)

    def default_export_path(self) -> Path:
        """``export_path``, else ``<log_dir or default_root_dir>/ssfd_encoder.ckpt``."""
        if self.hparams.export_path:
            return Path(self.hparams.export_path)
        folder = self.trainer.log_dir or self.trainer.default_root_dir
        return Path(folder) / DEFAULT_EXPORT_NAME

    def export_encoder(self, path: str | os.PathLike | None = None) -> Path:
        """Write the encoder (best checkpoint or current weights) for ``SSFD(weights=path)``."""
        out = Path(path) if path is not None else self.default_export_path()
        callback = self.trainer.checkpoint_callback if self._trainer is not None else None
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if self.hparams.export_from == "best" and best and Path(best).is_file():
            written = export_ssfd_encoder(best, out)
            source = f"best checkpoint {best}"
        else:
            written = save_ssfd_encoder(encoder_state_from_module_state(self.state_dict()), out)
            source = "final weights"
        log.info("SSFD encoder (%s) written to %s", source, written)
        return written

    # ------------------------------------------------------------------------------ images
    def _should_log_images(self, batch_idx: int) -> bool:
        n = self.hparams.log_images_every_n_epochs
        return (
            n > 0 and batch_idx == 0 and self.current_epoch % n == 0
            and not self.trainer.sanity_checking and self.trainer.is_global_zero
        )

    def _log_images(self, image: Tensor, mask: Tensor, restored: Tensor) -> None:
        lo, hi = image.min(), image.max()
        scale = (hi - lo).clamp_min(1e-8)
        views = {"masked": image * (1 - mask) - lo, "restored": restored - lo, "target": image - lo}
        grid = image_grid(views, scale)
        for logger in self.loggers:
            add_image = getattr(logger.experiment, "add_image", None)
            if callable(add_image):
                add_image("val/ssfd_inpainting", grid, global_step=self.current_epoch)
