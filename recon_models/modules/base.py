"""What every image-producing LightningModule of this project shares: metrics and image grids.

:class:`ImageQualityModule` owns a :class:`~lightning_dfd.metrics.DFDCollection` of PSNR / SSIM /
NMSE and deep feature distances chosen by name (``lightning_dfd.metrics.build_metric``; DFDs with
identical features share one encoder pass), updates it on magnitude images, logs ``val/<name>``
once per validation epoch (values are synced across processes by torchmetrics' ``compute()``),
and logs image grids to loggers that take images (TensorBoard). Subclasses own the model, the
loss and the steps (fastMRI's ``MriModule`` pattern).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics import MeanMetric
from torchvision.utils import make_grid

from lightning_dfd.catalog import DFDS, PIXEL_METRICS, default_metrics, is_dfd_name
from lightning_dfd.metrics import DFDCollection, is_dfd
from lightning_dfd.metrics.suite import build_suite
from lightning_dfd.preprocess import center_crop  # noqa: F401 - re-exported (its home moved)
from lightning_dfd.sample_ids import split_sample_id

#: The deep feature distances logged when a config names none (the paper's out-of-domain DFDs;
#: the catalog's ``recon`` defaults).
DEFAULT_DFDS: dict[str, dict[str, Any]] = {name: {} for name in default_metrics("recon", kind="dfd")}
#: The pixel metrics logged by default.
DEFAULT_PIXEL_METRICS: tuple[str, ...] = default_metrics("recon", kind="pixel")


def build_metric_collection(
    dfds: Mapping[str, Mapping[str, Any] | None],
    pixel_metrics: Sequence[str] = DEFAULT_PIXEL_METRICS,
    prefix: str = "val/",
    dfd_options: Mapping[str, Any] | None = None,
) -> DFDCollection:
    """The validation suite: pixel metrics and DFDs by name (:func:`lightning_dfd.build_suite`).

    DFDs cache their target features (keyed by sample id) unless configured otherwise; keys are
    ``<prefix><name>``.

    Args:
        dfds: DFD name -> keyword arguments of :func:`lightning_dfd.build_metric`
            (e.g. ``{"lpips_vgg": {"weights": "random"}}``).
        pixel_metrics: pixel metric names (``"psnr"``, ``"ssim"``, ``"ssim_gaussian"``, ``"nmse"``).
        prefix: prepended to every name when the collection is computed.
        dfd_options: keyword arguments of every DFD (e.g. ``{"precision": "auto"}``); a DFD's own
            arguments override them.

    Example:
        >>> metrics = build_metric_collection({"resnet_fd": {"weights": "random"}}, ["psnr"])
        >>> sorted(metrics.keys(keep_base=True))
        ['psnr', 'resnet_fd']
    """
    for name in pixel_metrics:
        if name not in PIXEL_METRICS:
            raise ValueError(f"Argument `pixel_metrics` must hold names from {PIXEL_METRICS}, "
                             f"but got {name!r}")
    for name in dfds:
        if not is_dfd_name(name):
            raise ValueError(f"Argument `dfds` has an unknown deep feature distance {name!r}; known DFDs: "
                             f"{', '.join(DFDS)}")
        if name in pixel_metrics:
            raise ValueError(f"Metric {name!r} is configured twice")
    # Validation targets never change: cache their features (keyed by sample id) by default.
    return build_suite({**{name: None for name in pixel_metrics}, **dict(dfds)}, prefix=prefix,
                       dfd_options={"feature_cache": True, **dict(dfd_options or {})})


def check_dfd_slices(dfd_slices: str | int) -> str | int:
    """Validate ``dfd_slices``: ``"all"``, ``"center"`` or a positive integer (slices per volume).

    Example:
        >>> check_dfd_slices("center"), check_dfd_slices(3)
        ('center', 3)
    """
    if isinstance(dfd_slices, str) and dfd_slices.isdigit():
        dfd_slices = int(dfd_slices)
    if dfd_slices in ("all", "center") or (
            isinstance(dfd_slices, int) and not isinstance(dfd_slices, bool) and dfd_slices >= 1):
        return dfd_slices
    raise ValueError(f"Argument `dfd_slices` must be 'all', 'center' or an integer >= 1 (slices per "
                     f"volume), but got {dfd_slices!r}")


def dfd_slice_rows(dfd_slices: str | int, slice_num: Tensor | None, num_slices: Tensor | None) -> Tensor:
    """Boolean rows of a batch whose slices a DFD scores under the ``dfd_slices`` protocol.

    ``"center"`` keeps slice ``n // 2`` of a volume of ``n`` slices; ``k`` keeps the ``k``
    central slices ``[s, s + k)`` with ``s = clip(n // 2 - k // 2, 0, n - k)`` (every slice when
    ``k >= n``).

    Example:
        >>> slices, counts = torch.arange(5), torch.full((5,), 5)
        >>> dfd_slice_rows("center", slices, counts).tolist()
        [False, False, True, False, False]
        >>> dfd_slice_rows(2, slices, counts).tolist()
        [False, True, True, False, False]
    """
    if dfd_slices == "all":
        if slice_num is None:
            raise ValueError("dfd_slice_rows('all') needs `slice_num` for the batch size")
        return torch.ones_like(slice_num, dtype=torch.bool)
    if slice_num is None or num_slices is None or bool((torch.as_tensor(num_slices) < 1).any()):
        raise ValueError(f"`dfd_slices={dfd_slices!r}` needs each sample's `slice_num` and `num_slices` "
                         "(ReconSample.num_slices, set by ReconTransform); got "
                         f"{None if num_slices is None else torch.as_tensor(num_slices).tolist()}")
    slice_num, num_slices = slice_num.long(), torch.as_tensor(num_slices, device=slice_num.device).long()
    k = 1 if dfd_slices == "center" else int(dfd_slices)
    start = (num_slices // 2 - k // 2).clamp(min=0)
    start = torch.minimum(start, (num_slices - k).clamp(min=0))
    return (slice_num >= start) & (slice_num < start + k)


#: Smallest side, in pixels, of a tile in :func:`image_grid` (small images are upscaled to it).
MIN_TILE = 256
#: Height of the label strip above every tile of :func:`image_grid`.
LABEL_HEIGHT = 28


def _label_strip(text: str, width: int, height: int = LABEL_HEIGHT) -> Tensor:
    """A ``(height, width)`` float strip with ``text`` in white on black (PIL's bundled font).

    The font shrinks (down to 8 px) until the text fits the strip's width.
    """
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(strip)
    for size in range(max(10, height - 10), 7, -1):
        try:
            font = ImageFont.load_default(size=size)
        except (TypeError, ImportError, OSError):  # Pillow < 10.1 or without FreeType: bitmap font
            font = ImageFont.load_default()
            break
        left, _, right, _ = draw.textbbox((0, 0), text, font=font)
        if right - left <= width - 4:
            break
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = max(2, (width - (right - left)) // 2 - left)
    y = (height - (bottom - top)) // 2 - top
    draw.text((x, y), text, fill=255, font=font)
    return torch.frombuffer(bytearray(strip.tobytes()), dtype=torch.uint8).reshape(
        height, width).float() / 255.0


def image_grid(
    images: Mapping[str, Tensor],
    scale: Tensor | float = 1.0,
    min_tile: int = MIN_TILE,
    labels: bool = True,
) -> Tensor:
    """One labelled row of ``(H, W)`` real images, each divided by ``scale`` and clipped to [0, 1].

    Images are upscaled by the smallest integer factor (nearest neighbour, so pixels stay sharp)
    that makes their shorter side at least ``min_tile`` pixels; with ``labels`` each tile gets a
    strip above it naming it (the key, ``_`` written as ``-``: ``zero_filled`` -> "zero-filled").

    Returns a ``(3, H', W')`` float image for ``add_image``: tiles and strips separated by 2 px.

    Example:
        >>> grid = image_grid({"target": torch.ones(48, 48), "error": torch.zeros(48, 48)})
        >>> grid.shape  # 48 px * 6 = 288 >= 256; 28 px label strip; 2 px padding
        torch.Size([3, 320, 582])
        >>> image_grid({"a": torch.ones(8, 8), "b": torch.ones(8, 8)}, min_tile=0, labels=False).shape
        torch.Size([3, 12, 22])
    """
    if not images:
        raise ValueError("Argument `images` must hold at least one image, but got none")
    shapes = {tuple(image.shape) for image in images.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"Argument `images` must hold (H, W) images of one shape, but got {shapes}")
    height, width = next(iter(shapes))
    factor = max(1, -(-int(min_tile) // max(1, min(height, width))))
    tiles = []
    for name, image in images.items():
        tile = (image.detach().float() / scale).clamp(0, 1).cpu()
        tile = tile.repeat_interleave(factor, dim=0).repeat_interleave(factor, dim=1)
        if labels:
            tile = torch.cat([_label_strip(str(name).replace("_", "-"), tile.shape[1]), tile])
        tiles.append(tile)
    return make_grid(torch.stack(tiles).unsqueeze(1), nrow=len(tiles), padding=2)


class ImageQualityModule(LightningModule):
    """Base module: validation metrics on magnitude images, synced per epoch, and image grids.

    Args:
        dfds: DFD name -> keyword arguments of ``build_metric`` (``weights``, ``normalization``,
            ``max_batch``...); ``None`` means :data:`DEFAULT_DFDS` with their default weights,
            ``{}`` no DFD.
        pixel_metrics: which of PSNR / SSIM / NMSE to log.
        log_images_every_n_epochs: log an image grid every this many epochs (0: never).
        dfd_slices: which slices of each volume the DFDs score: ``"all"``, ``"center"`` or
            ``k`` (the ``k`` central slices); see :func:`dfd_slice_rows`.
        dfd_every_n_epochs: compute DFDs every this many epochs (epochs 0, n, 2n, ...).
        dfd_precision: encoder precision of every DFD that does not set its own ``precision``:
            ``"fp32"`` (exact parity with the references), ``"bf16"``, or ``"auto"`` (bf16 where
            the GPU or CPU has fast bf16 units: AMX / AVX512-BF16; each DFD's choice and its reason
            are printed when validation starts). For monitoring; rank fidelity of bf16 against
            fp32 is in ``benchmarks/RESULTS.md``.

    **Validation protocol** (``dfd_slices``, ``dfd_every_n_epochs``): PSNR / SSIM / NMSE and
    ``val/loss`` always use every slice of every epoch. DFDs can be restricted, as in the paper
    (which scored the centre slice of each volume), to a fixed subset of each volume's slices:
    ``"all"``, ``"center"`` (slice ``n // 2`` of a volume of ``n`` slices) or an integer ``k``
    (the ``k`` central slices, ``n // 2 - k // 2`` onwards; all of them when ``k >= n``); and to
    the epochs ``e`` with ``e % dfd_every_n_epochs == 0`` (epoch 0 first). On other epochs DFDs
    are neither computed nor logged, and :attr:`skipped_metrics` names them:
    :class:`~lightning_dfd.callbacks.DFDEarlyStopping` and
    :class:`~lightning_dfd.callbacks.DFDModelCheckpoint` monitoring such a DFD skip those
    validations (patience counts DFD evaluations, ``last.ckpt`` is still written).

    A DFD configured with ``reduction: none`` is logged as its mean, and its per-image values
    (all processes, sorted by sample id) are kept in :attr:`per_image_values` and written by the
    global rank 0 to ``<log_dir>/per_image/epoch=NNN.csv`` (``sample_id, volume_id, slice`` and
    one column per such metric), e.g. for correlation with reader scores.
    """

    def __init__(
        self,
        dfds: Mapping[str, Mapping[str, Any] | None] | None = None,
        pixel_metrics: Sequence[str] = DEFAULT_PIXEL_METRICS,
        log_images_every_n_epochs: int = 1,
        dfd_slices: str | int = "all",
        dfd_every_n_epochs: int = 1,
        dfd_precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.dfd_slices = check_dfd_slices(dfd_slices)
        if isinstance(dfd_every_n_epochs, bool) or not isinstance(dfd_every_n_epochs, int) \
                or dfd_every_n_epochs < 1:
            raise ValueError(f"Argument `dfd_every_n_epochs` must be an integer >= 1, but got "
                             f"{dfd_every_n_epochs!r}")
        self.dfd_every_n_epochs = dfd_every_n_epochs
        #: logged names not computed in the last validation epoch (DFDs off that epoch)
        self.skipped_metrics: frozenset[str] = frozenset()
        if log_images_every_n_epochs < 0:
            raise ValueError("Argument `log_images_every_n_epochs` must be >= 0, but got "
                             f"{log_images_every_n_epochs}")
        dfds = DEFAULT_DFDS if dfds is None else dfds
        # The precision is checked (and "auto" decided) where each DFD builds its options.
        self.val_metrics = build_metric_collection(dfds, pixel_metrics,
                                                   dfd_options={"precision": dfd_precision})
        #: DFD name -> whether its cache budget line was printed (present: precision printed)
        self._announced: dict[str, bool] = {}
        self.val_loss = MeanMetric()
        self.log_images_every_n_epochs = log_images_every_n_epochs
        #: metric name -> ``{"ids", "values"}`` of the last validation epoch (``reduction="none"``)
        self.per_image_values: dict[str, dict[str, Tensor]] = {}

    @property
    def metric_modes(self) -> dict[str, str]:
        """Logged name -> ``"max"`` or ``"min"`` (from each metric's ``higher_is_better``)."""
        return {
            f"{self.val_metrics.prefix}{name}": "max" if metric.higher_is_better else "min"
            for name, metric in self.val_metrics.items(keep_base=True, copy_state=False)
        }

    def update_val_loss(self, loss: Tensor, batch_size: int) -> None:
        """Add a batch's mean loss, weighted by its size, to ``val/loss``.

        A torchmetrics mean is exact over processes with unequal numbers of batches, and needs no
        collective operation per step (see :mod:`recon_models.data.samplers`).
        """
        self.val_loss.update(loss.detach(), weight=batch_size)

    def dfds_due(self) -> bool:
        """Whether DFDs are computed in this epoch's validation (``epoch % dfd_every_n_epochs == 0``)."""
        epoch = self.current_epoch if self._trainer is not None else 0
        return epoch % self.dfd_every_n_epochs == 0

    def update_val_metrics(
        self,
        preds: Tensor,
        target: Tensor,
        data_range: Tensor,
        volume_ids: Tensor,
        sample_ids: Tensor,
        slice_num: Tensor | None = None,
        num_slices: Tensor | None = None,
        map_row: int | None = None,
    ) -> tuple[str, Tensor] | None:
        """Add a batch of ``(B, H, W)`` magnitude images to every validation metric, all or nothing.

        Pixel metrics get ``data_range`` and ``volume_ids`` (per-volume aggregation as in
        ``fastmri.evaluate``); DFDs get ``sample_ids``, and only the rows that
        :func:`dfd_slice_rows` selects (``slice_num`` / ``num_slices`` are needed unless
        ``dfd_slices="all"``), in the epochs :meth:`dfds_due` allows
        (:meth:`~lightning_dfd.metrics.DFDCollection.update_rows`). Each metric receives only
        the keywords its ``update`` accepts.

        With ``map_row``, returns ``(name, (H, W) map)`` of that row for the first DFD with a
        per-pixel form (None when no DFD has one): from the features of this very update when the
        DFDs scored every row (no second encoder pass), else from one pass over that image alone.
        """
        kwargs = {"data_range": data_range, "volume_ids": volume_ids, "sample_ids": sample_ids}
        dfds = [name for name, m in self.val_metrics.items(keep_base=True, copy_state=False) if is_dfd(m)]
        rows: dict[str, Tensor | None] = {}
        if not self.dfds_due():
            rows = dict.fromkeys(dfds)
        elif self.dfd_slices != "all" and dfds:
            selected = dfd_slice_rows(self.dfd_slices, slice_num, num_slices)
            rows = dict.fromkeys(dfds, selected)
        preds = preds.detach()
        with torch.no_grad(), self.val_metrics.one_pass():
            self.val_metrics.update_rows(rows, preds, target, **kwargs)
            if map_row is None:
                return None
            every_row = not rows or all(r is not None and bool(r.all()) for r in rows.values())
            if every_row:
                found = self._first_dfd_map(preds, target)
                return None if found is None else (found[0], found[1][map_row])
            found = self._first_dfd_map(preds[map_row:map_row + 1], target[map_row:map_row + 1])
            return None if found is None else (found[0], found[1][0])

    def _first_dfd_map(self, preds: Tensor, target: Tensor) -> tuple[str, Tensor] | None:
        """``(name, (B, H, W) maps)`` of the first DFD with a per-pixel form (every DFD but DISTS)."""
        for name, metric in self.val_metrics.items(keep_base=True, copy_state=False):
            if not is_dfd(metric):
                continue
            try:
                return name, metric.distance_map(preds, target)[:, 0]
            except (NotImplementedError, ValueError):  # no map (DISTS) or image too small
                continue
        return None

    def on_validation_epoch_start(self) -> None:
        """On rank 0: each DFD's precision (first validation) and its feature-cache budget line.

        The budget line needs the bytes of one image's features, known once the cache holds an
        entry, so it comes at the start of the first validation after that (when the hit rate
        it predicts begins).
        """
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        n_images = _validation_images(self.trainer)
        for name, metric in self.val_metrics.items(keep_base=True, copy_state=False):
            if not is_dfd(metric):
                continue
            if name not in self._announced:
                options = metric.options
                print(f"[dfd] {name}: encoder precision {options.precision_in_use} "
                      f"({options.precision_reason})", flush=True)
                self._announced[name] = False
            cache = metric.feature_cache
            if (not self._announced[name] and cache is not None and n_images
                    and cache.bytes_per_image(metric.cache_namespace)):
                plan = cache.plan(n_images, namespace=metric.cache_namespace, name=name)
                print(f"[dfd] {plan}", flush=True)
                self._announced[name] = True

    def on_validation_epoch_end(self) -> None:
        """Compute every metric over all processes, log it as ``val/<name>``, and reset.

        DFDs are left out (and listed in :attr:`skipped_metrics`) in epochs that are not
        :meth:`dfds_due`; the decision depends on the epoch only, so every process computes (and
        synchronises) the same metrics.
        """
        due = self.dfds_due()
        prefix = self.val_metrics.prefix or ""
        values = {}
        skipped = set()
        for name, metric in self.val_metrics.items(keep_base=True, copy_state=False):
            if is_dfd(metric) and not due:
                skipped.add(f"{prefix}{name}")
                continue
            values[f"{prefix}{name}"] = metric.compute()
        self.skipped_metrics = frozenset(skipped)
        self.per_image_values = {}
        for name, metric in self.val_metrics.items(keep_base=True, copy_state=False):
            if is_dfd(metric) and metric.reduction == "none" and due:
                self.per_image_values[name] = metric.compute_per_image()
                values[f"{self.val_metrics.prefix}{name}"] = self.per_image_values[name]["values"].mean()
        self.val_metrics.reset()
        if self.per_image_values and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self.write_per_image_values(Path(self.trainer.log_dir or ".") / "per_image")
        if self.val_loss.update_called:
            values["val/loss"] = self.val_loss.compute()
        self.val_loss.reset()
        # Values are identical on every rank already; sync_dist only averages equal numbers.
        self.log_dict({name: value.float() for name, value in values.items()}, sync_dist=True)

    def write_per_image_values(self, folder: Path) -> Path:
        """Write :attr:`per_image_values` as ``folder/epoch=NNN.csv``; returns the path."""
        rows: dict[int, dict[str, float]] = {}
        for name, found in self.per_image_values.items():
            for sample_id, value in zip(found["ids"].tolist(), found["values"].tolist(), strict=True):
                rows.setdefault(sample_id, {})[name] = value
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"epoch={self.current_epoch:03d}.csv"
        names = list(self.per_image_values)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sample_id", "volume_id", "slice", *names])
            for sample_id in sorted(rows):
                volume, slice_num = split_sample_id(sample_id)
                writer.writerow([sample_id, volume, slice_num,
                                 *(rows[sample_id].get(name, "") for name in names)])
        return path

    def should_log_images(self, batch_idx: int) -> bool:
        """True for the first validation batch of an image-logging epoch, on the global rank 0."""
        n = self.log_images_every_n_epochs
        return (
            n > 0
            and batch_idx == 0
            and self.current_epoch % n == 0
            and not self.trainer.sanity_checking
            and self.trainer.is_global_zero
        )

    def log_image_grid(self, tag: str, images: Mapping[str, Tensor], scale: Tensor | float) -> None:
        """Log one row of images to every logger that takes images (TensorBoard).

        Loggers without ``experiment.add_image`` (CSV) are skipped.
        """
        grid = image_grid(images, scale)
        for logger in self.loggers:
            add_image = getattr(logger.experiment, "add_image", None)
            if callable(add_image):
                add_image(tag, grid, global_step=self.current_epoch)


def _validation_images(trainer: Any) -> int:
    """Images in this process's validation set (0 when unknown): what a feature cache must hold."""
    loaders = trainer.val_dataloaders
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    total = 0
    for loader in loaders:
        try:
            total += len(loader.dataset)
        except (AttributeError, TypeError):
            return 0
    return total
