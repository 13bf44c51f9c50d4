"""Training: one process on CPU/GPU, or many under ``torchrun`` (PyTorch DDP).

The same command runs both ways; ``torchrun`` sets ``RANK``/``WORLD_SIZE`` and the
trainer picks NCCL on GPUs, gloo on CPUs. Each run folder holds the resolved config
(``config.yaml``), ``metrics.json``, ``curves.png``, ``last.pt`` (every epoch, for exact
resume) and ``model.pt`` (weights + model config, what export and eval read).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from hybreid.data.datasets import VISIBLE_INFRARED, load_dataset
from hybreid.data.image_dataset import ImageDataset
from hybreid.data.samplers import CrossModalitySampler, IdentitySampler
from hybreid.data.transforms import modality_transforms
from hybreid.errors import UserError
from hybreid.eval.evaluate import evaluate
from hybreid.models import build, model_config
from hybreid.models.checkpoint import save_model
from hybreid.train.config import OptimSection, TrainConfig, resolve_config
from hybreid.train.losses import build_loss


def learning_rate(epoch: int, optim: OptimSection) -> float:
    """Base learning rate of ``epoch`` (0-based).

    ``warmup_cosine`` (FusionReID, Sec. IV-B): linear from ``warmup_start_lr`` to ``lr``
    over ``warmup_epochs``, then cosine decay over the remaining epochs.
    ``step`` (HAResformer, Sec. IV-A): ``lr``, times ``gamma`` after each of ``step_epochs``.
    """
    lr = optim.lr
    if optim.schedule == "warmup_cosine":
        warmup = optim.warmup_epochs
        if epoch < warmup:
            return optim.warmup_start_lr + (lr - optim.warmup_start_lr) * epoch / warmup
        progress = (epoch - warmup) / max(1, optim.epochs - warmup)
        return 0.5 * lr * (1 + math.cos(math.pi * progress))
    return lr * optim.gamma ** sum(epoch >= e for e in optim.step_epochs)


def make_optimizer(model: torch.nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    """SGD with momentum (both papers), or Adam (``optim.name=adam``, for short CPU runs);
    biases get ``bias_lr_factor`` x the learning rate (FusionReID authors' code)."""
    weights, biases = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (biases if name.endswith("bias") else weights).append(parameter)
    groups = [{"params": weights, "lr_factor": 1.0}, {"params": biases, "lr_factor": optim.bias_lr_factor}]
    if optim.name == "adam":
        # The fused kernel updates every tensor in one pass: a few percent off a CPU training step.
        return torch.optim.Adam(groups, lr=optim.lr, weight_decay=optim.weight_decay, fused=True)
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> DistributedContext:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    evaluated = [h for h in history if "mAP" in h]
    if evaluated:
        ax_map.plot([h["epoch"] for h in evaluated], [100 * h["mAP"] for h in evaluated], marker="o", label="mAP")
        ax_map.plot([h["epoch"] for h in evaluated], [100 * h["rank1"] for h in evaluated], marker="s",
                    label="Rank-1")
        ax_map.legend()
    ax_map.set(xlabel="epoch", ylabel="%", title="evaluation", ylim=(0, 100))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class Trainer:
    def __init__(self, config: TrainConfig | dict, progress: bool = True):
        """``config``: a resolved :class:`TrainConfig`, or a dict of its settings (defaults filled in,
        unknown keys refused)."""
        self.config = config if isinstance(config, TrainConfig) else resolve_config(None, config)
        self.progress = progress
        self.ctx = DistributedContext.from_environment()
        self.device = torch.device(f"cuda:{self.ctx.local_rank}" if torch.cuda.is_available() else "cpu")
        self.output = Path(self.config.output)
        if not self.config.resume and not self.config.overwrite and (self.output / "config.yaml").exists():
            raise UserError(f"run folder {self.output} holds an earlier run; give another output=FOLDER, "
                            f"resume=auto to continue it, or overwrite=true to start it again")
        self._seed()
        self._load_dataset()
        self._build_model()
        self._make_loader()
        self.optimizer = make_optimizer(self.model, self.config.optim)
        self.use_amp = self.config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.train_model = self.model
        if self.ctx.world_size > 1:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.ctx.local_rank] if self.device.type == "cuda" else None)
        self.start_epoch = 0
        self.history: list[dict] = []
        self.step_losses: list[float] = []
        if self.config.resume:
            self._resume(self.config.resume)

    def _seed(self) -> None:
        seed = self.config.seed + self.ctx.rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _load_dataset(self) -> None:
        settings = self.config.dataset
        if not settings.root:
            raise UserError("dataset.root is not set: give dataset.root=/path/to/dataset")
        self.dataset_name = settings.name
        options = {"trial": settings.trial} if settings.name == "regdb" else {}
        self.dataset = load_dataset(settings.name, settings.root, **options)

    def _build_model(self) -> None:
        family = model_config(self.config.model)["family"]
        if family == "haresformer" and self.dataset_name not in VISIBLE_INFRARED:
            raise UserError(f"HAResformer's losses need visible and infrared images of every identity; "
                            f"{self.dataset_name} is visible only: use sysu_mm01, regdb or llcm")
        self.family = family
        options = {"num_classes": self.dataset.num_train_pids, **self.config.model_options}
        if family == "fusionreid":
            options.setdefault("num_cameras", self.dataset.num_cameras)
        self.model_options = options
        self.model = build(self.config.model, **options).to(self.device)
        self.loss = build_loss(family, self.dataset_name, **self.config.loss)

    def _make_loader(self) -> None:
        """Identity-balanced batches (P identities x K images; for visible-infrared data K of
        each modality), split over the ranks."""
        train, sampler, seed = self.dataset.train, self.config.sampler, self.config.seed
        if self.dataset_name in VISIBLE_INFRARED:
            self.sampler = CrossModalitySampler([s.pid for s in train], [s.modality for s in train], sampler.num_ids,
                                                sampler.num_instances, seed, self.ctx.rank, self.ctx.world_size)
            per_rank = sampler.num_ids * 2 * sampler.num_instances // self.ctx.world_size
        else:
            self.sampler = IdentitySampler([s.pid for s in train], sampler.num_ids, sampler.num_instances, seed,
                                           self.ctx.rank, self.ctx.world_size)
            per_rank = sampler.num_ids * sampler.num_instances // self.ctx.world_size
        data = self.config.data
        transforms = modality_transforms(self.family, self.model.image_size, self.model.pixel_mean,
                                         self.model.pixel_std, train=True, pad=data.pad, erasing=data.erasing)
        self.loader = DataLoader(ImageDataset(train, transforms, cache=data.cache), batch_size=per_rank,
                                 sampler=self.sampler, num_workers=data.workers, drop_last=True,
                                 pin_memory=self.device.type == "cuda")

    # -- checkpoints ---------------------------------------------------------------

    def _checkpoint_path(self) -> Path:
        return self.output / "last.pt"

    def _save_checkpoint(self, epoch: int) -> None:
        torch.save({
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "history": self.history,
            "config": self.config.model_dump(),
        }, self._checkpoint_path())

    def _resume(self, resume: str) -> None:
        path = self._checkpoint_path() if resume == "auto" else Path(resume)
        if not path.is_file():
            if resume == "auto":
                return
            raise UserError(f"checkpoint {path} does not exist")
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.history = state["history"]
        self.start_epoch = state["epoch"] + 1

    # -- training -------------------------------------------------------------------

    def _set_lr(self, epoch: int) -> float:
        lr = learning_rate(epoch, self.config.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_factor"]
        return lr

    def train_epoch(self, epoch: int) -> dict:
        self.model.train()
        self.sampler.set_epoch(epoch)
        lr = self._set_lr(epoch)
        totals: dict[str, float] = {}
        steps = 0
        started = time.perf_counter()
        limit = self.config.max_steps_per_epoch
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{self.config.optim.epochs}",
                   total=min(len(self.loader), limit) if limit else None,
                   disable=not (self.progress and self.ctx.is_main), leave=False)
        for images, pids, camids, modalities in bar:
            images, pids = images.to(self.device, non_blocking=True), pids.to(self.device)
            camids, modalities = camids.to(self.device), modalities.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                output = self.train_model(images, camids)
            loss, terms = self.loss(output, pids, modalities)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step_losses.append(loss.item())
            for key, value in {"loss": loss, **terms}.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach())
            steps += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if limit and steps >= limit:
                break
        if steps == 0:
            raise UserError("the training set fills no batch: lower sampler.num_ids or sampler.num_instances")
        # The epoch's training time (loading included), apart from evaluation and checkpoints.
        seconds = time.perf_counter() - started
        return {"epoch": epoch + 1, "lr": lr, "seconds": seconds, **{k: v / steps for k, v in totals.items()}}

    def evaluate(self) -> dict:
        settings = self.config.eval
        use_camids = settings.use_camids and self.family == "fusionreid"
        return evaluate(self.model, self.dataset, rerank=settings.rerank, use_camids=use_camids,
                        trials=settings.trials, batch_size=self.config.data.eval_batch_size,
                        device=self.device, progress=self.progress and self.ctx.is_main)

    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train to ``optim.epochs``; ``stop_after=k`` stops after epoch k as an interrupted
        run would (its ``last.pt`` resumes with ``resume=auto``)."""
        epochs = self.config.optim.epochs
        if self.ctx.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "config.yaml").write_text(yaml.safe_dump(self.config.model_dump(), sort_keys=False))
        for epoch in range(self.start_epoch, epochs):
            record = self.train_epoch(epoch)
            last = epoch + 1 == epochs
            every = self.config.eval.every
            if self.ctx.is_main:
                if every and ((epoch + 1) % every == 0 or last):
                    metrics = self.evaluate()
                    record.update({k: v for k, v in metrics.items() if not isinstance(v, dict)})
                    record["eval"] = metrics
                self.history.append(record)
                self._save_checkpoint(epoch)
                self._write_reports()
                shown = ", ".join(f"{k} {record[k]:.4f}" for k in ("loss", "mAP", "rank1") if k in record)
                tqdm.write(f"epoch {epoch + 1}/{epochs}: {shown}")
            if self.ctx.world_size > 1:
                dist.barrier()
            if stop_after is not None and epoch + 1 >= stop_after:
                return self.history
        if self.ctx.is_main:
            save_model(self.output / "model.pt", self.model, self.config.model, self.model_options,
                       extra={"dataset": self.dataset_name})
        return self.history

    def _write_reports(self) -> None:
        (self.output / "metrics.json").write_text(json.dumps(self.history, indent=2))
        _plot_curves(self.history, self.output / "curves.png")
