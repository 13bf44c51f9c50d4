"""The trainer: run folder, exact resume, DDP across two CPU processes, model files."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from hybreid.errors import UserError
from hybreid.lab.mosquitto import free_port
from hybreid.models.checkpoint import load_model
from hybreid.synthetic.datasets import write_market1501
from hybreid.train.config import resolve_config
from hybreid.train.trainer import Trainer


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = tmp_path_factory.mktemp("market")
    return write_market1501(root, train_ids=8, test_ids=4, images_per_camera=2, num_cameras=3, distractors=2,
                            junk=1, size=(64, 32), progress=False)


def small_config(root, output, **extra) -> dict:
    overrides = {
        "model": "fusionreid_tiny",
        "model_options": {"image_size": [64, 32]},
        "dataset": {"name": "market1501", "root": str(root)},
        "sampler": {"num_ids": 4, "num_instances": 2},
        "optim": {"epochs": 2, "lr": 0.01, "schedule": "step", "step_epochs": [1]},
        "eval": {"every": 0},
        "max_steps_per_epoch": 3,
        "output": str(output),
        "loss": {},
    }
    return resolve_config(None, {**overrides, **extra})


@pytest.mark.slow
def test_run_folder_holds_config_metrics_curves_and_model(market, tmp_path):
    config = small_config(market, tmp_path / "run", eval={"every": 2, "use_camids": False, "trials": 1,
                                                        "rerank": False})
    history = Trainer(config, progress=False).fit()
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["seconds"] > 0 for h in history)  # each epoch's training time, apart from evaluation
    assert "mAP" in history[-1] and 0.0 <= history[-1]["mAP"] <= 1.0
    assert json.loads((tmp_path / "run/metrics.json").read_text())[-1]["epoch"] == 2
    assert (tmp_path / "run/curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "fusionreid_tiny" in (tmp_path / "run/config.yaml").read_text()
    model, payload = load_model(tmp_path / "run/model.pt")
    assert payload["dataset"] == "market1501"
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 32)).shape == (2, model.embedding_dim)


@pytest.mark.slow
def test_resume_reproduces_the_next_losses(market, tmp_path):
    torch.set_num_threads(1)
    uninterrupted = Trainer(small_config(market, tmp_path / "a"), progress=False)
    uninterrupted.fit()
    interrupted = Trainer(small_config(market, tmp_path / "b"), progress=False)
    interrupted.fit(stop_after=1)
    assert len(interrupted.step_losses) == 3
    resumed = Trainer(small_config(market, tmp_path / "b", resume="auto"), progress=False)
    assert resumed.start_epoch == 1
    resumed.fit()
    assert resumed.step_losses == pytest.approx(uninterrupted.step_losses[3:], rel=1e-5)


def test_missing_dataset_root_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="dataset.root"):
        Trainer(small_config(None, tmp_path, dataset={"name": "market1501", "root": None}), progress=False)


def test_haresformer_on_a_visible_only_dataset_is_refused(market, tmp_path):
    with pytest.raises(UserError, match="visible only"):
        Trainer(small_config(market, tmp_path, model="haresformer_tiny"), progress=False)


def _ddp_worker(rank: int, world_size: int, port: int, root: str, output: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(small_config(root, output), progress=False)
    trainer.fit()
    torch.save({n: p.detach() for n, p in trainer.model.named_parameters()}, f"{output}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_with_identical_weights(market, tmp_path):
    port = free_port()
    mp.spawn(_ddp_worker, args=(2, port, str(market), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    initial = Trainer(small_config(market, tmp_path / "init"), progress=False).model
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[n], rank1[n]) for n in rank0)
    # ...and training moved them.
    moved = [n for n, p in initial.named_parameters() if not torch.equal(p.detach(), rank0[n])]
    assert len(moved) > len(rank0) // 2
