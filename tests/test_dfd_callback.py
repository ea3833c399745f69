"""DFDCallback on a plain LightningModule that knows nothing of lightning-dfd.

``PlainDenoiser`` below imports only torch and lightning, and returns fastMRI ``MriModule``-style
dicts from ``validation_step``. Its validation outputs get a deliberate artifact whose strength
follows a schedule, so the DFD falls then rises and early stopping has something to act on.
The values the callback logs are compared with LPIPS / PSNR run directly over the very outputs the
module returned; 2 gloo processes (ddp_spawn) must log what 1 process logs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from lightning_dfd import LPIPS, PSNR, DFDCallback
from lightning_dfd.callbacks import padding_sampler_problem
from lightning_dfd.sample_ids import volume_key

TOL = 1e-6
SCHEDULE = (0.6, 0.1, 0.8, 1.6, 3.2, 6.4)  # artifact strength per epoch: best at epoch 1


# ---- the user's code: nothing from lightning_dfd below this line until the tests -------------

class Slices(Dataset):
    """``n`` slices of 32x32 images from 2 "volumes", fastMRI-style fields."""

    def __init__(self, n: int = 6, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
        self.target = torch.stack([(xx**2 + yy**2 < 0.5 + 0.05 * i).float() * (1 + i / n)
                                   + 0.05 * torch.rand(32, 32, generator=g) for i in range(n)])
        self.image = self.target + 0.2 * torch.randn(n, 32, 32, generator=g)
        self.artifact = torch.randn(n, 32, 32, generator=g)
        self.fname = [f"file{1000 + i % 2}.h5" for i in range(n)]
        self.slice_num = [i // 2 for i in range(n)]

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int):
        t = self.target[i]
        return self.image[i], t, self.artifact[i], self.fname[i], self.slice_num[i], float(t.max())


class PlainDenoiser(LightningModule):
    """A 3x3 conv denoiser; validation outputs carry ``SCHEDULE[epoch]`` times an artifact."""

    def __init__(self, schedule=SCHEDULE, as_tuple: bool = False) -> None:
        super().__init__()
        self.net = nn.Conv2d(1, 1, 3, padding=1)
        self.schedule = schedule
        self.as_tuple = as_tuple
        self.recorded: list[list[dict]] = []

    def training_step(self, batch, batch_idx):
        image, target = batch[0], batch[1]
        return nn.functional.mse_loss(self.net(image.unsqueeze(1)).squeeze(1), target)

    def on_validation_epoch_start(self) -> None:
        self.recorded.append([])

    def validation_step(self, batch, batch_idx):
        image, target, artifact, fname, slice_num, max_value = batch
        output = self.net(image.unsqueeze(1)).squeeze(1) + self.schedule[self.current_epoch] * artifact
        self.recorded[-1].append({"output": output.detach().cpu().clone(), "target": target.cpu(),
                                  "fname": list(fname), "slice_num": slice_num.cpu(),
                                  "max_value": max_value.cpu()})
        if self.as_tuple:
            return output, target
        return {"output": output, "target": target, "fname": fname, "slice_num": slice_num,
                "max_value": max_value, "loss": nn.functional.mse_loss(output, target)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class SlicesData(LightningDataModule):
    """Validation shards without padding under DDP (each slice on exactly one process)."""

    def __init__(self, n_val: int = 6, unrepeated: bool = True) -> None:
        super().__init__()
        self.n_val, self.unrepeated = n_val, unrepeated

    def train_dataloader(self):
        return DataLoader(Slices(4, seed=1), batch_size=2)

    def val_dataloader(self):
        data = Slices(self.n_val)
        distributed = self.trainer is not None and self.trainer.world_size > 1
        unrepeated = distributed and self.unrepeated
        sampler = UnrepeatedDistributedSampler(data, shuffle=False) if unrepeated else None
        return DataLoader(data, batch_size=2, sampler=sampler)


class Record(Callback):
    """Every epoch's ``callback_metrics`` (and, given a folder, one JSON per rank)."""

    def __init__(self, names, folder: str | None = None) -> None:
        self.names, self.folder, self.epochs = names, folder, []

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.epochs.append({n: float(trainer.callback_metrics[n]) for n in self.names})
        if self.folder:
            path = Path(self.folder) / f"rank{trainer.global_rank}.json"
            path.write_text(json.dumps({"epochs": self.epochs, "world_size": trainer.world_size,
                                        "stopped": trainer.current_epoch}))


# ---- tests -----------------------------------------------------------------------------------

def _trainer(tmp_path, callbacks, max_epochs=6, **kwargs):
    return Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   default_root_dir=str(tmp_path), callbacks=callbacks, **kwargs)


def _direct(cb: DFDCallback, epoch_outputs: list[dict]) -> dict[str, float]:
    """LPIPS (the callback's own random weights) and PSNR run directly over recorded outputs."""
    lpips = LPIPS(weights="random")
    lpips.network.load_state_dict(cb.metrics["lpips_vgg"].network.state_dict())
    psnr = PSNR()
    for out in epoch_outputs:
        lpips.update(out["output"], out["target"])
        psnr.update(out["output"], out["target"], data_range=out["max_value"],
                    volume_ids=torch.tensor([volume_key(f) for f in out["fname"]]))
    return {"val/lpips_vgg": float(lpips.compute()), "val/psnr": float(psnr.compute())}


def test_logs_every_epoch_equals_direct_metrics_and_early_stops(tmp_path):
    seed_everything(0)
    module = PlainDenoiser()
    cb = DFDCallback({"lpips_vgg": {"weights": "random"}, "psnr": {}})
    record = Record(["val/lpips_vgg", "val/psnr"])
    stop = EarlyStopping(monitor="val/lpips_vgg", mode="min", patience=1)
    trainer = _trainer(tmp_path, [cb, record, stop])
    trainer.fit(module, datamodule=SlicesData())
    logged = [e["val/lpips_vgg"] for e in record.epochs]
    assert len(logged) == len(module.recorded) >= 3
    for epoch, values in enumerate(record.epochs):
        expected = _direct(cb, module.recorded[epoch])
        assert values == pytest.approx(expected, rel=TOL, abs=TOL), epoch
    # EarlyStopping acted on the logged DFD: stopped at the first epoch that did not improve.
    first_worse = next(e for e in range(1, len(logged)) if logged[e] >= min(logged[:e]))
    assert trainer.current_epoch == first_worse + 1 and len(logged) == first_worse + 1 < len(SCHEDULE)
    assert float(stop.best_score) == pytest.approx(min(logged), rel=TOL)
    # Target features were cached once per slice, keyed by (fname, slice_num).
    cache = cb.metrics["lpips_vgg"].feature_cache
    assert cache is not None and len(cache) == len(Slices())


def test_tuple_outputs_and_custom_keys():
    data = Slices(4)
    cb = DFDCallback({"lpips_alex": {"weights": "random"}}, positions={"output": 1, "target": 0})
    direct = LPIPS(net="alex", weights="random")
    direct.network.load_state_dict(cb.metrics["lpips_alex"].network.state_dict())
    cb.update((data.target[:2], data.image[:2]))
    cb.update([data.target[2:], data.image[2:]])
    direct.update(data.image, data.target)
    assert float(cb.metrics.compute()["val/lpips_alex"]) == pytest.approx(float(direct.compute()), rel=TOL)

    renamed = DFDCallback({"psnr": {}}, keys={"output": "recon", "target": "ref"}, prefix="valid/")
    renamed.update({"recon": data.image, "ref": data.target})
    expected = PSNR()
    expected.update(data.image, data.target)
    assert float(renamed.metrics.compute()["valid/psnr"]) == pytest.approx(float(expected.compute()))


def test_bad_outputs_and_arguments_are_named():
    cb = DFDCallback({"psnr": {}})
    with pytest.raises(TypeError, match="validation_step returns, but it returned NoneType") as err:
        cb.update(None)
    message = str(err.value)  # the keys and positions it needs, and the options naming others
    assert "under 'output'" in message and "under 'target'" in message and "fname" not in message
    assert "keys={'output'" in message and "position 0" in message and "at 1" in message
    assert "positions=" in message
    custom = DFDCallback({"psnr": {}}, keys={"output": "recon", "target": "ref"},
                         positions={"output": 1, "target": 0})
    with pytest.raises(TypeError, match="under 'recon' and the reference under 'ref'.*position 1.*at 0"):
        custom.update(None)
    with pytest.raises(KeyError, match="lacks the keys 'output' and 'target'"):
        cb.update({"pred": torch.rand(1, 8, 8)})
    with pytest.raises(ValueError, match="`fname` holds 3 values for a batch of 2"):
        cb.update({"output": torch.rand(2, 8, 8), "target": torch.rand(2, 8, 8), "fname": ["a", "b", "c"]})
    assert not cb.metrics["psnr"].update_called  # nothing was counted
    with pytest.raises(ValueError, match=r"Unknown metric 'lpips' \(did you mean 'lpips_vgg'"):
        DFDCallback({"lpips": {}})
    with pytest.raises(ValueError, match="Argument `keys` must map roles"):
        DFDCallback(["psnr"], keys={"prediction": "x"})


def test_checkpoints_hold_no_encoder_weights(tmp_path):
    seed_everything(0)
    module = PlainDenoiser()
    cb = DFDCallback({"lpips_vgg": {"weights": "random"}})
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(tmp_path, [cb, ckpt], max_epochs=1).fit(module, datamodule=SlicesData())
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert set(checkpoint["state_dict"]) == {"net.weight", "net.bias"}
    states = checkpoint.get("callbacks", {})
    assert not states.get(cb.state_key) and cb.state_dict() == {}
    big = [k for state in states.values() for k, v in state.items()
           if isinstance(v, torch.Tensor) and v.numel() > 1]
    assert big == []  # only ModelCheckpoint's scalar scores
    assert (tmp_path / "ckpt" / "last.ckpt").stat().st_size < 100_000  # a VGG-16 trunk is ~59 MB


def test_warns_about_lightnings_padding_sampler():
    data = Slices(5)
    padded = DataLoader(data, sampler=DistributedSampler(data, num_replicas=2, rank=0, shuffle=False))
    trainer = SimpleNamespace(world_size=2, val_dataloaders=padded, is_global_zero=True)
    assert "repeats 1 sample(s)" in padding_sampler_problem(trainer)
    unrepeated = DataLoader(data, sampler=UnrepeatedDistributedSampler(data, num_replicas=2, rank=0))
    assert padding_sampler_problem(SimpleNamespace(world_size=2, val_dataloaders=[unrepeated])) is None
    even = Slices(6)
    fine = DataLoader(even, sampler=DistributedSampler(even, num_replicas=2, rank=0))
    assert padding_sampler_problem(SimpleNamespace(world_size=2, val_dataloaders=fine)) is None
    cb = DFDCallback(["psnr"])
    with pytest.warns(UserWarning, match="padding DistributedSampler: 5 samples on 2 processes"):
        cb.on_validation_epoch_start(trainer, SimpleNamespace(device=torch.device("cpu")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cb.on_validation_epoch_start(trainer, SimpleNamespace(device=torch.device("cpu")))  # once


def _run(tmp_path: Path, devices: int, padded: bool = False) -> dict:
    seed_everything(0)
    module = PlainDenoiser()
    cb = DFDCallback({"lpips_vgg": {"weights": "random"}, "psnr": {}})
    folder = tmp_path / f"devices{devices}{'-padded' if padded else ''}"
    folder.mkdir()
    record = Record(["val/lpips_vgg", "val/psnr"], folder=str(folder))
    stop = EarlyStopping(monitor="val/lpips_vgg", mode="min", patience=1)
    trainer = Trainer(accelerator="cpu", devices=devices, max_epochs=len(SCHEDULE), logger=False,
                      strategy="ddp_spawn" if devices > 1 else "auto", use_distributed_sampler=padded,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[cb, record, stop], default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=SlicesData(n_val=7, unrepeated=not padded))  # shards of 4 and 3
    return {r: json.loads((folder / f"rank{r}.json").read_text()) for r in range(devices)}


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_equal_one(tmp_path):
    torch.set_num_threads(1)
    single = _run(tmp_path, 1)[0]
    ranks = _run(tmp_path, 2)
    assert [r["world_size"] for r in ranks.values()] == [2, 2], "DDP did not really run"
    for result in ranks.values():
        assert result["stopped"] == single["stopped"] < len(SCHEDULE) - 1
        assert len(result["epochs"]) == len(single["epochs"])
        for got, expected in zip(result["epochs"], single["epochs"], strict=True):
            assert got == pytest.approx(expected, rel=TOL, abs=TOL)
    # The guard is not decorative: Lightning's padding sampler scores a slice twice.
    padded = _run(tmp_path, 2, padded=True)[0]
    assert padded["epochs"][0]["val/lpips_vgg"] != pytest.approx(single["epochs"][0]["val/lpips_vgg"],
                                                                 rel=1e-4)


# ---- several validation dataloaders, and the test loop -------------------------------------

class TwoLoaderDenoiser(PlainDenoiser):
    """The user's module with several val loaders: ``dataloader_idx`` in its steps, as Lightning asks."""

    def __init__(self) -> None:
        super().__init__()
        self.by_loader: list[dict[int, list[dict]]] = []
        self.tested: list[dict] = []

    def on_validation_epoch_start(self) -> None:
        self.by_loader.append({})

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        image, target, artifact, fname, slice_num, max_value = batch
        output = self.net(image.unsqueeze(1)).squeeze(1) + self.schedule[self.current_epoch] * artifact
        self.by_loader[-1].setdefault(dataloader_idx, []).append(
            {"output": output.detach().cpu().clone(), "target": target.cpu(), "fname": list(fname),
             "slice_num": slice_num.cpu(), "max_value": max_value.cpu()})
        loss = nn.functional.mse_loss(output, target)
        self.log("val/loss", loss)  # Lightning names it val/loss/dataloader_idx_<k>
        return {"output": output, "target": target, "fname": fname, "slice_num": slice_num,
                "max_value": max_value}

    def test_step(self, batch, batch_idx):
        image, target, _, fname, slice_num, max_value = batch
        output = self.net(image.unsqueeze(1)).squeeze(1)
        self.tested.append({"output": output.detach().cpu().clone(), "target": target.cpu(),
                            "fname": list(fname), "slice_num": slice_num.cpu(), "max_value": max_value.cpu()})
        return {"output": output, "target": target, "fname": fname, "slice_num": slice_num,
                "max_value": max_value}


class TwoLoaders(SlicesData):
    """Two validation sets with the same file names and slice numbers but different images."""

    def val_dataloader(self):
        return [DataLoader(Slices(6, seed=0), batch_size=2), DataLoader(Slices(4, seed=7), batch_size=3)]

    def test_dataloader(self):
        return DataLoader(Slices(5, seed=3), batch_size=2)


class Keys(Callback):
    """The ``callback_metrics`` after every validation epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def test_two_val_dataloaders_log_one_set_per_loader_named_as_lightning_does(tmp_path):
    seed_everything(0)
    module = TwoLoaderDenoiser()
    cb = DFDCallback({"lpips_vgg": {"weights": "random"}, "psnr": {}})
    keys = Keys()
    _trainer(tmp_path, [cb, keys], max_epochs=2).fit(module, datamodule=TwoLoaders())
    assert len(keys.epochs) == 2
    for epoch, logged in enumerate(keys.epochs):
        names = ("loss", "lpips_vgg", "psnr")  # val/loss: Lightning's own naming, for comparison
        assert sorted(logged) == sorted(f"val/{name}/dataloader_idx_{k}" for name in names for k in (0, 1))
        for k in (0, 1):
            expected = _direct(cb, module.by_loader[epoch][k])
            got = {name: logged[f"{name}/dataloader_idx_{k}"] for name in ("val/lpips_vgg", "val/psnr")}
            assert got == pytest.approx(expected, rel=TOL, abs=TOL), (epoch, k)
        # the two loaders really differ (a single pooled set would give one value)
        first, second = logged["val/lpips_vgg/dataloader_idx_0"], logged["val/lpips_vgg/dataloader_idx_1"]
        assert first != pytest.approx(second)
    # one cache for both suites, keys per loader: 6 + 4 targets, all hits in the second epoch
    cache = cb.metrics["lpips_vgg"].feature_cache
    assert cb.suite(1)["lpips_vgg"].feature_cache is cache
    assert cb.suite(1)["lpips_vgg"].network is cb.metrics["lpips_vgg"].network  # no second VGG
    assert len(cache) == 10 and cache.stats.misses == 10 and cache.stats.hits == 10


def test_one_loader_keeps_plain_names_and_the_test_loop_logs_test_names(tmp_path):
    seed_everything(0)
    module = TwoLoaderDenoiser()
    cb = DFDCallback({"lpips_vgg": {"weights": "random"}, "psnr": {}}, stages=("validate", "test"))
    keys = Keys()
    data = SlicesData()  # one validation loader
    trainer = _trainer(tmp_path, [cb, keys], max_epochs=1)
    trainer.fit(module, datamodule=data)
    assert sorted(keys.epochs[0]) == ["val/loss", "val/lpips_vgg", "val/psnr"]
    direct = _direct(cb, module.by_loader[0][0])
    assert keys.epochs[0]["val/lpips_vgg"] == pytest.approx(direct["val/lpips_vgg"], rel=TOL)
    results = trainer.test(module, dataloaders=TwoLoaders().test_dataloader(), verbose=False)
    expected = {f"test/{k.removeprefix('val/')}": v for k, v in _direct(cb, module.tested).items()}
    assert results[0] == pytest.approx(expected, rel=TOL, abs=TOL)
    assert trainer.callback_metrics["test/lpips_vgg"] == pytest.approx(expected["test/lpips_vgg"], rel=TOL)
    # validation only by default: the test loop is left alone
    plain = DFDCallback({"psnr": {}})
    assert _trainer(tmp_path, [plain], max_epochs=1).test(
        module, dataloaders=TwoLoaders().test_dataloader(), verbose=False) == [{}]
    with pytest.raises(ValueError, match="Argument `stages` must name stages among"):
        DFDCallback(["psnr"], stages=("train",))


class UnevenLoaders(LightningDataModule):
    """Two validation loaders without padding; the second holds one slice, so one rank has none."""

    def train_dataloader(self):
        return DataLoader(Slices(4, seed=1), batch_size=2)

    def val_dataloader(self):
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        # every slice on exactly one rank, an empty shard allowed (UnrepeatedDistributedSampler refuses it)
        return [DataLoader(data, batch_size=2, sampler=list(range(len(data)))[rank::world])
                for data in (Slices(7, seed=0), Slices(1, seed=7))]


class DumpKeys(Callback):
    def __init__(self, folder: str) -> None:
        self.folder, self.epochs = folder, []

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items() if "loss" not in k})
        (Path(self.folder) / f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"epochs": self.epochs, "world_size": trainer.world_size}))


def _run_loaders(tmp_path: Path, devices: int) -> dict:
    seed_everything(0)
    folder = tmp_path / f"loaders{devices}"
    folder.mkdir()
    cb = DFDCallback({"lpips_vgg": {"weights": "random"}, "psnr": {}})
    trainer = Trainer(accelerator="cpu", devices=devices, max_epochs=2, logger=False,
                      strategy="ddp_spawn" if devices > 1 else "auto", use_distributed_sampler=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[cb, DumpKeys(str(folder))], default_root_dir=str(tmp_path))
    module = TwoLoaderDenoiser()
    module.allow_zero_length_dataloader_with_multiple_devices = True  # Lightning's opt-in for an empty shard
    trainer.fit(module, datamodule=UnevenLoaders())
    return {r: json.loads((folder / f"rank{r}.json").read_text()) for r in range(devices)}


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_with_two_loaders_equal_one_even_when_a_rank_has_no_batch(tmp_path):
    torch.set_num_threads(1)
    single = _run_loaders(tmp_path, 1)[0]
    assert sorted(single["epochs"][0]) == sorted(f"val/{n}/dataloader_idx_{k}" for n in ("lpips_vgg", "psnr")
                                                 for k in (0, 1))  # fmt: skip
    ranks = _run_loaders(tmp_path, 2)  # rank 1 sees no batch of the second loader, and still syncs
    assert [r["world_size"] for r in ranks.values()] == [2, 2], "DDP did not really run"
    for result in ranks.values():
        for got, expected in zip(result["epochs"], single["epochs"], strict=True):
            assert got == pytest.approx(expected, rel=TOL, abs=TOL)


# ---- names the module logs itself --------------------------------------------------------------

class LogsItsOwn(PlainDenoiser):
    """Logs ``val/lpips_alex`` itself: in ``validation_step`` or in ``on_validation_epoch_end``."""

    def __init__(self, where: str, **log_kwargs) -> None:
        super().__init__()
        self.where, self.log_kwargs = where, log_kwargs

    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        if self.where == "step":
            self.log("val/lpips_alex", 123.0)
        return out

    def on_validation_epoch_end(self) -> None:
        if self.where == "epoch_end":
            self.log("val/lpips_alex", torch.tensor(123.0), **self.log_kwargs)


def _validate(tmp_path, module, *callbacks):
    trainer = _trainer(tmp_path, list(callbacks), max_epochs=1, limit_val_batches=2)
    return trainer, trainer.validate(module, datamodule=SlicesData(), verbose=False)


def test_a_name_the_module_logs_in_validation_step_is_refused_naming_both(tmp_path):
    cb = DFDCallback({"lpips_alex": {"weights": "random"}, "psnr": {}})
    with pytest.raises(ValueError, match=r"DFDCallback: `val/lpips_alex` is also logged by the "
                                         r"LightningModule's `validation_step`"
                                         r".*DFDCallback\(prefix=\.\.\.\)"):
        _validate(tmp_path, LogsItsOwn("step"), cb)
    # with another prefix both live side by side, the module's own value untouched
    trainer, _ = _validate(tmp_path, LogsItsOwn("step"), DFDCallback({"lpips_alex": {"weights": "random"}},
                                                                     prefix="dfd/"))
    assert float(trainer.callback_metrics["val/lpips_alex"]) == 123.0
    assert 0 < float(trainer.callback_metrics["dfd/lpips_alex"]) < 1


def test_a_name_logged_after_the_callback_is_refused_and_never_silently_kept(tmp_path):
    # The same self.log arguments as the callback's: Lightning merges the two values silently.
    same = {"on_step": False, "on_epoch": True, "sync_dist": True, "reduce_fx": "max",
            "add_dataloader_idx": False}
    cb = DFDCallback({"lpips_alex": {"weights": "random"}})
    with pytest.raises(ValueError, match=r"`val/lpips_alex` is also logged by a hook that ran after it "
                                         r"\(value 123\.0 instead of the callback's 0\.\d+"):
        _validate(tmp_path, LogsItsOwn("epoch_end", **same), cb)
    # Other arguments: Lightning itself refuses the second self.log of the name in that hook.
    with pytest.raises(Exception, match="twice in `on_validation_epoch_end` with different arguments"):
        _validate(tmp_path, LogsItsOwn("epoch_end"), DFDCallback({"lpips_alex": {"weights": "random"}}))


def test_two_callbacks_logging_one_name_are_refused(tmp_path):
    first = DFDCallback({"psnr": {}})
    second = DFDCallback({"nmse": {}, "psnr": {}})
    trainer = _trainer(tmp_path, [first, second], max_epochs=1, limit_val_batches=2)
    with pytest.raises(ValueError, match=r"`val/psnr` is also logged by `on_validation_epoch_end` "
                                         r"\(the LightningModule or another callback\)"):
        trainer.validate(PlainDenoiser(), datamodule=SlicesData(), verbose=False)
    assert "val/nmse" not in trainer.callback_metrics  # refused before any of its values was logged
    trainer, results = _validate(tmp_path, PlainDenoiser(), first, DFDCallback({"psnr": {}}, prefix="other/"))
    assert float(trainer.callback_metrics["val/psnr"]) == float(trainer.callback_metrics["other/psnr"])


def test_a_nan_the_callback_logged_is_not_taken_for_a_clash():
    cb = DFDCallback({"psnr": {}})
    cb._logged["validate"] = {"val/psnr": float("nan"), "val/nmse": 0.5}
    cb._check_kept(SimpleNamespace(callback_metrics={"val/psnr": torch.tensor(float("nan")),
                                                     "val/nmse": torch.tensor(0.5)}), "validate")
    cb._logged["validate"] = {"val/psnr": float("nan")}
    with pytest.raises(ValueError, match=r"value 1\.0 instead of the callback's nan"):
        cb._check_kept(SimpleNamespace(callback_metrics={"val/psnr": torch.tensor(1.0)}), "validate")
