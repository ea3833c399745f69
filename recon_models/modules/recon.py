"""``ReconModule``: trains and validates a reconstruction network (UNet or unrolled FISTA)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import Tensor, nn

from lightning_dfd.catalog import DFDS, PIXEL_METRICS, is_dfd_name
from lightning_dfd.losses import DFDLoss, sharing_encoder
from lightning_dfd.preprocess import center_crop
from recon_models.checkpoints import reconcile_hparams
from recon_models.data.sample import ReconSample
from recon_models.models import build_model, get_loss, sense_adjoint
from recon_models.models.losses import LOSSES
from recon_models.modules.base import DEFAULT_PIXEL_METRICS, ImageQualityModule
from recon_models.modules.callbacks import RNGStateCheckpoint

#: ``lr_scheduler`` names -> torch scheduler classes (stepped once per epoch).
LR_SCHEDULERS: dict[str, type[torch.optim.lr_scheduler.LRScheduler]] = {
    "step": torch.optim.lr_scheduler.StepLR,
    "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
}
#: ``loss`` term name for the network's own pixel loss (``default_loss``).
DEFAULT_PIXEL_TERM = "l1"
#: Encoder precision of the DFD loss terms: bf16 autocast where the hardware has fast bf16 units.
DFD_LOSS_PRECISION = "auto"


def parse_loss(loss: str | Mapping[str, float] | None) -> dict[str, float]:
    """The ``loss`` argument -> ``{term: weight}``; a name (or None) is that term with weight 1.

    Terms: ``"l1"`` (the network's ``default_loss``), ``"image_l1"``, ``"kspace_l1"`` and any DFD
    of the catalog (``"ssfd"``, ``"lpips_vgg"``...). Weights are finite numbers >= 0, one > 0.

    Example:
        >>> parse_loss({"l1": 1.0, "ssfd": 0.1}), parse_loss("kspace_l1"), parse_loss(None)
        ({'l1': 1.0, 'ssfd': 0.1}, {'kspace_l1': 1.0}, {'l1': 1.0})
    """
    if loss is None or isinstance(loss, str):
        loss = {loss or DEFAULT_PIXEL_TERM: 1.0}
    if not isinstance(loss, Mapping) or not loss:
        raise ValueError(f"Argument `loss` must be a loss name or a mapping of term -> weight "
                         f"(e.g. {{l1: 1.0, ssfd: 0.1}}), but got {loss!r}")
    terms = {}
    for name, weight in loss.items():
        if name != DEFAULT_PIXEL_TERM and name not in LOSSES and not is_dfd_name(name):
            hint = " (a pixel metric, not a loss)" if name in PIXEL_METRICS else ""
            raise ValueError(f"Argument `loss` has an unknown term {name!r}{hint}; terms: "
                             f"{', '.join((DEFAULT_PIXEL_TERM, *LOSSES, *DFDS))}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise ValueError(f"Argument `loss[{name!r}]` must be a finite number >= 0, but got {weight!r}")
        terms[str(name)] = float(weight)
    if not any(terms.values()):
        raise ValueError(f"Argument `loss` must give one term a weight > 0, but got {dict(loss)}")
    return terms


class ReconModule(ImageQualityModule):
    """One LightningModule for every reconstruction network of :mod:`recon_models.models`.

    Training minimises the network's loss (complex L1 in the image for the UNet, in k-space for
    the unrolled network, unless ``loss`` says otherwise), optionally plus weighted deep feature
    distances (``loss: {l1: 1.0, ssfd: 0.1}``; see :meth:`loss_terms`). Validation logs
    ``val/loss`` and, on the centre crop (``crop_size``) of the magnitude images, PSNR / SSIM /
    NMSE aggregated per volume with ``data_range = max_value`` and the configured deep feature
    distances, all synced across
    processes once per epoch. Every ``log_images_every_n_epochs`` epochs an image grid (target,
    zero-filled, reconstruction, error x ``error_scale``) goes to the image-capable loggers.

    Args:
        network: ``"unet"`` or ``"unrolled"`` (see :func:`recon_models.models.build_model`).
        network_kwargs: constructor arguments of the network (paper defaults when empty).
        loss: ``"image_l1"`` or ``"kspace_l1"``; ``None`` uses the network's ``default_loss``; or
            a weighted sum of terms, ``{"l1": 1.0, "ssfd": 0.1}`` (:func:`parse_loss`): ``"l1"`` is
            the network's ``default_loss``, a DFD name adds that DFD of the centre-cropped
            magnitudes (:class:`~lightning_dfd.DFDLoss`, encoder in bf16 where the hardware has
            it). A DFD term shares the encoder (one copy of the weights) of the validation DFD
            of the same name, built from its ``dfds`` arguments; a DFD term not validated gets
            its own encoder with default arguments. Each term is logged as
            ``train/loss_<term>``, the sum as ``train/loss``; ``val/loss`` is the pixel loss
            (the first pixel term, else the network's ``default_loss``). A warning says when a
            DFD of the loss is also what early stopping or checkpointing monitors.
        lr: Adam learning rate (paper: 1e-4).
        weight_decay: Adam weight decay (paper: 1e-4).
        lr_scheduler: ``None`` (the paper: constant learning rate), ``"step"`` (``StepLR``) or
            ``"cosine"`` (``CosineAnnealingLR``), stepped once per epoch; its state is saved in
            checkpoints and restored on resume.
        lr_scheduler_kwargs: arguments of the scheduler: ``step_size`` (default 10) and
            ``gamma`` (default 0.5) for ``"step"``; ``T_max`` (default: the trainer's
            ``max_epochs``) and ``eta_min`` for ``"cosine"``.
        dfds: DFD name -> ``build_metric`` keyword arguments, e.g.
            ``{"lpips_vgg": {"weights": "random"}}``; ``None``: LPIPS-VGG, DISTS and ResNetFD with
            their default (pretrained) weights; ``{}``: none.
        pixel_metrics: which of PSNR / SSIM / NMSE to log.
        log_images_every_n_epochs: image grid period in epochs (0: never).
        error_scale: the error map in the image grid is ``|recon - target| * error_scale``.
        dfd_slices: the slices of each volume the DFDs score: ``"all"``, ``"center"`` (the
            paper's protocol: one centre slice per volume) or ``k`` central slices; PSNR / SSIM /
            NMSE always use every slice (see :class:`ImageQualityModule`).
        dfd_every_n_epochs: compute and log the DFDs every this many epochs only.
        dfd_precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` for every DFD that sets no
            ``precision`` of its own (see :class:`ImageQualityModule`).

    Resuming (``fit(ckpt_path="last")``) continues the epoch, optimizer, scheduler and callback
    states (Lightning) and the random number generators (:class:`RNGStateCheckpoint`, which
    :meth:`configure_callbacks` adds), so a resumed run draws the same training masks and
    shuffles as an uninterrupted one.

    Example:
        >>> module = ReconModule("unet", {"chans": 4, "num_pool_layers": 2}, dfds={})
        >>> module.loss_name, sorted(module.metric_modes.items())
        ('image_l1', [('val/nmse', 'min'), ('val/psnr', 'max'), ('val/ssim', 'max')])
    """

    def __init__(
        self,
        network: str = "unet",
        network_kwargs: dict[str, Any] | None = None,
        loss: str | Mapping[str, float] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        lr_scheduler: str | None = None,
        lr_scheduler_kwargs: dict[str, Any] | None = None,
        dfds: dict[str, dict[str, Any] | None] | None = None,
        pixel_metrics: Sequence[str] = DEFAULT_PIXEL_METRICS,
        log_images_every_n_epochs: int = 1,
        error_scale: float = 5.0,
        dfd_slices: str | int = "all",
        dfd_every_n_epochs: int = 1,
        dfd_precision: str = "fp32",
    ) -> None:
        if lr_scheduler is not None and lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"Argument `lr_scheduler` must be None or one of "
                             f"{tuple(LR_SCHEDULERS)}, but got {lr_scheduler!r}")
        super().__init__(dfds=dfds, pixel_metrics=pixel_metrics,
                         log_images_every_n_epochs=log_images_every_n_epochs,
                         dfd_slices=dfd_slices, dfd_every_n_epochs=dfd_every_n_epochs,
                         dfd_precision=dfd_precision)
        self.save_hyperparameters()
        self.network = build_model(network, **(network_kwargs or {}))
        #: term -> weight of the training loss (:func:`parse_loss`)
        self.loss_weights = parse_loss(loss)
        pixel = [self._pixel_loss_name(t) for t in self.loss_weights if not is_dfd_name(t)]
        self.loss_name = pixel[0] if pixel else self.network.default_loss
        self.loss_fn = get_loss(self.loss_name)
        validated = dict(self.val_metrics.items(keep_base=True, copy_state=False))
        #: DFD term -> its loss; the encoder is the validation DFD's own network object when there is one
        self.loss_dfds = nn.ModuleDict({
            name: DFDLoss(sharing_encoder(validated[name], precision=DFD_LOSS_PRECISION), reduction="none")
            if name in validated else DFDLoss(name, reduction="none", precision=DFD_LOSS_PRECISION)
            for name in self.loss_weights if is_dfd_name(name)
        })
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_scheduler = lr_scheduler
        self.lr_scheduler_kwargs = dict(lr_scheduler_kwargs or {})
        self.error_scale = error_scale

    def forward(self, masked_kspace: Tensor, mask: Tensor, maps: Tensor) -> Tensor:
        """``(B, C, H, W)`` masked k-space, ``(B, 1, 1, W)`` mask, maps -> ``(B, H, W)`` image."""
        return self.network(masked_kspace, mask, maps)

    def _pixel_loss_name(self, term: str) -> str:
        return self.network.default_loss if term == DEFAULT_PIXEL_TERM else term

    def loss_terms(self, pred: Tensor, batch: ReconSample) -> dict[str, Tensor]:
        """Each unweighted term of the training loss of one batch: ``{term: scalar}``.

        Pixel terms compare the complex images (``loss(pred, target, maps)``); DFD terms the
        magnitudes centre-cropped to each sample's ``crop_size`` (what validation scores), the
        mean over the batch's images.
        """
        terms: dict[str, Tensor] = {}
        for name in self.loss_weights:
            if not is_dfd_name(name):
                terms[name] = get_loss(self._pixel_loss_name(name))(pred, batch.target, batch.maps)
                continue
            values = [self.loss_dfds[name](center_crop(pred[rows].abs(), size),
                                           center_crop(batch.target[rows].abs(), size))
                      for rows, size in _groups_by_crop(batch.crop_size)]
            terms[name] = torch.cat(values).mean()
        return terms

    def training_step(self, batch: ReconSample, batch_idx: int) -> Tensor:
        """Loss of one batch, logged as ``train/loss`` (and each term as ``train/loss_<term>``)."""
        pred = self(batch.masked_kspace, batch.mask, batch.maps)
        terms = self.loss_terms(pred, batch)
        loss = sum(self.loss_weights[name] * value for name, value in terms.items())
        size = pred.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        if len(terms) > 1 or self.loss_dfds:
            for name, value in terms.items():
                self.log(f"train/loss_{name}", value.detach(), on_step=True, on_epoch=True, batch_size=size)
        return loss

    def on_fit_start(self) -> None:
        """Warn when a DFD of the loss is also what early stopping or checkpointing monitors."""
        monitored = {}
        for callback in self.trainer.callbacks:
            if isinstance(callback, (EarlyStopping, ModelCheckpoint)) and callback.monitor:
                monitored.setdefault(callback.monitor, []).append(type(callback).__name__)
        prefix = self.val_metrics.prefix or ""
        for name in self.loss_dfds:
            users = monitored.get(f"{prefix}{name}")
            if users:
                warnings.warn(
                    f"{' and '.join(users)} monitor {prefix}{name}, which the training loss optimises "
                    f"(loss term {name!r}): the model is selected by the distance it was trained on. "
                    "The paper evaluates with DFDs the model was not optimised for; monitor another "
                    "metric (e.g. val/lpips_vgg or val/psnr)", UserWarning, stacklevel=2)

    def validation_step(self, batch: ReconSample, batch_idx: int) -> Tensor:
        """Loss (``val/loss``) and metric updates of one batch; an image grid on the first one."""
        pred = self(batch.masked_kspace, batch.mask, batch.maps)
        loss = self.loss_fn(pred, batch.target, batch.maps)
        self.update_val_loss(loss, batch_size=pred.shape[0])

        pred_abs, target_abs = pred.detach().abs(), batch.target.abs()
        log_images = self.should_log_images(batch_idx)
        dfd_map = None
        for rows, size in _groups_by_crop(batch.crop_size):
            first = log_images and bool((rows == 0).any())  # the group holding the logged image
            row = int((rows == 0).nonzero()[0, 0]) if first else None
            found = self.update_val_metrics(
                center_crop(pred_abs[rows], size),
                center_crop(target_abs[rows], size),
                data_range=batch.max_value[rows],
                volume_ids=batch.volume_id[rows],
                sample_ids=batch.sample_id[rows],
                slice_num=batch.slice_num[rows],
                num_slices=torch.as_tensor(batch.num_slices, device=rows.device).reshape(-1)[rows]
                if self.dfd_slices != "all" else None,
                map_row=row,
            )
            if found is not None:  # the map of image 0, from the features just scored
                dfd_map = found
        if log_images:
            self._log_images(batch, pred.detach(), dfd_map)
        return loss

    def predict_step(self, batch: ReconSample, batch_idx: int) -> dict[str, Any]:
        """Centre-cropped magnitudes of the reconstruction and the reference, with their keys.

        :class:`~recon_models.modules.prediction_writer.ReconstructionWriter` writes them as h5
        files for ``lightning-dfd evaluate``. Mixed crop sizes in one batch are not supported.
        """
        pred = self(batch.masked_kspace, batch.mask, batch.maps)
        size = batch.crop_size[0].tolist()
        if not bool((batch.crop_size == batch.crop_size[0]).all()):
            raise ValueError("predict_step needs one crop size per batch; use batch_size=1")
        return {
            "fname": list(batch.fname),
            "slice_num": batch.slice_num,
            "reconstruction": center_crop(pred.abs(), size),
            "reference": center_crop(batch.target.abs(), size),
        }

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        """Adam with the configured learning rate and weight decay (the paper's optimiser).

        Returns the optimizer alone without ``lr_scheduler``; otherwise Lightning's dict with the
        scheduler stepped once per epoch.
        """
        trainable = [p for p in self.parameters() if p.requires_grad]  # not the frozen DFD encoders
        optimizer = torch.optim.Adam(trainable, lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_scheduler is None:
            return optimizer
        kwargs = dict(self.lr_scheduler_kwargs)
        if self.lr_scheduler == "step":
            kwargs = {"step_size": 10, "gamma": 0.5, **kwargs}
        elif "T_max" not in kwargs:
            max_epochs = self.trainer.max_epochs if self._trainer is not None else None
            if max_epochs is None or max_epochs < 1:
                raise ValueError("`lr_scheduler='cosine'` needs `lr_scheduler_kwargs.T_max` when "
                                 "the trainer has no positive `max_epochs`")
            kwargs["T_max"] = max_epochs
        try:
            scheduler = LR_SCHEDULERS[self.lr_scheduler](optimizer, **kwargs)
        except TypeError as error:
            raise ValueError(f"Argument `lr_scheduler_kwargs` {self.lr_scheduler_kwargs} does not "
                             f"fit lr_scheduler={self.lr_scheduler!r}: {error}") from error
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "frequency": 1}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoint vs command line: see :func:`recon_models.checkpoints.reconcile_hparams`.

        The network must match the checkpoint's; metrics, ``lr`` and every other setting are the
        command line's, and each difference is reported in one warning line.
        """
        reconcile_hparams(self, checkpoint)

    def configure_callbacks(self) -> list[Callback]:
        """:class:`RNGStateCheckpoint`: resumed runs continue the random streams exactly."""
        return [RNGStateCheckpoint()]

    def _log_images(self, batch: ReconSample, pred: Tensor, dfd_map: tuple[str, Tensor] | None) -> None:
        size = batch.crop_size[0].tolist()
        zero_filled = sense_adjoint(batch.masked_kspace[:1], batch.maps[:1], batch.mask[:1])[0]
        target = center_crop(batch.target[0].abs(), size)
        recon = center_crop(pred[0].abs(), size)
        images = {
            "target": target,
            "zero_filled": center_crop(zero_filled.abs(), size),
            "reconstruction": recon,
            f"error x{self.error_scale:g}": (recon - target).abs() * self.error_scale,  # the tile says so
        }
        scale = batch.max_value[0]
        if dfd_map is not None:  # where the first DFD with a spatial map sees the error
            name, values = dfd_map  # shown relative to its own maximum (white), which the label says
            images[f"{name} map (0 to max)"] = values / values.max().clamp_min(1e-12) * scale
        self.log_image_grid("val/images", images, scale=scale)


def _groups_by_crop(crop_size: Tensor) -> list[tuple[Tensor, tuple[int, int]]]:
    """Row indices of a batch grouped by crop size (one group in any ordinary batch)."""
    sizes: dict[tuple[int, int], list[int]] = {}
    for row, size in enumerate(crop_size.tolist()):
        sizes.setdefault(tuple(size), []).append(row)
    device = crop_size.device
    return [(torch.tensor(rows, device=device), size) for size, rows in sizes.items()]
