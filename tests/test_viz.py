"""The papers' figures: Grad-CAM maps, attention weights, retrieval order, distributions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hybreid.data.datasets import load_dataset
from hybreid.eval.metrics import cosine_distance
from hybreid.eval.protocols import headline_ranking, score
from hybreid.models import build
from hybreid.synthetic.datasets import write_market1501, write_sysu_mm01
from hybreid.train.config import resolve_config
from hybreid.train.trainer import Trainer
from hybreid.viz.attention import attention_maps
from hybreid.viz.commands import model_input, probe_pairs, run_distribution, run_retrieval
from hybreid.viz.gradcam import similarity_gradcam
from hybreid.viz.layers import attention_taps, gradcam_taps


@pytest.fixture(scope="module")
def sysu(tmp_path_factory):
    root = tmp_path_factory.mktemp("sysu")
    write_sysu_mm01(root, train_ids=4, test_ids=6, images_per_camera=2, progress=False)
    return load_dataset("sysu_mm01", root)


@pytest.fixture(scope="module")
def trained_fusionreid(tmp_path_factory):
    """The tiny FusionReID trained briefly on synthetic Market people (the benchmark's recipe)."""
    root = tmp_path_factory.mktemp("market")
    write_market1501(root, train_ids=30, test_ids=24, images_per_camera=4, progress=False)
    config = resolve_config("configs/train/fusionreid_synthetic.yaml", {
        "model": "fusionreid_tiny", "dataset": {"name": "market1501", "root": str(root)},
        "output": str(tmp_path_factory.mktemp("run")), "optim": {"epochs": 6}, "eval": {"every": 0},
    })
    trainer = Trainer(config, progress=False)
    trainer.fit()
    return trainer.model.eval(), trainer.dataset, root, trainer.model_options


@pytest.mark.parametrize("name", ["fusionreid_tiny", "haresformer_tiny"])
def test_heatmaps_have_the_image_size_and_unit_range(name):
    torch.manual_seed(0)
    model = build(name).eval()
    images = torch.rand(3, 3, *model.image_size)
    reference = model(torch.rand(3, 3, *model.image_size)).detach()
    heatmaps = similarity_gradcam(model, images, reference)
    assert list(heatmaps) == [tap.label for tap in gradcam_taps(model)]
    for label, maps in heatmaps.items():
        assert maps.shape == (3, *model.image_size), label
        assert maps.min() >= 0 and maps.max() <= 1 + 1e-6, label
        assert (maps.reshape(3, -1).max(1) > 0.99).sum() >= 2, f"{label}: maps are not scaled to 1"


def test_fusionreid_shared_seu_gives_each_branch_its_own_map():
    torch.manual_seed(0)
    model = build("fusionreid_tiny").eval()
    assert model.dmf.htms[0].seu_cnn is model.dmf.htms[0].seu_vit  # the paper's shared SEU
    heatmaps = similarity_gradcam(model, torch.rand(2, 3, *model.image_size), torch.randn(model.embedding_dim))
    assert not np.allclose(heatmaps["CNN after HTM1"], heatmaps["ViT after HTM1"])


@pytest.mark.parametrize("name", ["fusionreid_tiny", "haresformer_tiny"])
def test_attention_rows_sum_to_one_over_the_local_tokens(name):
    torch.manual_seed(0)
    model = build(name).eval()
    maps = attention_maps(model, torch.rand(2, 3, *model.image_size))
    assert list(maps) == [tap.label for tap in attention_taps(model)]
    for label, entry in maps.items():
        weights = entry["weights"]
        assert weights.shape[-1] == entry["grid"][0] * entry["grid"][1], label
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5, err_msg=label)
        assert (weights >= 0).all()


def test_attention_matches_the_blocks_own_softmax():
    """The recomputed weights are the ones the block used: rebuild the block's output from them."""
    torch.manual_seed(0)
    model = build("fusionreid_tiny").eval()
    images = torch.rand(2, 3, *model.image_size)
    mfu = model.dmf.htms[0].mfu_cnn.attn
    captured = {}
    handle = mfu.register_forward_hook(lambda m, args, out: captured.update(args=args, out=out))
    weights = attention_maps(model, images)["HTM1 MFU (CNN->ViT)"]["weights"]
    handle.remove()
    _, key, value = captured["args"]
    v = mfu.v(value).unflatten(-1, (mfu.num_heads, -1)).transpose(1, 2)  # [N, heads, T, d]
    rebuilt = mfu.proj((torch.from_numpy(weights)[:, :, None] @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(rebuilt, captured["out"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dataset_name", ["market1501", "sysu_mm01"])
def test_retrieval_order_is_the_evaluation_ranking(dataset_name, sysu, tmp_path):
    if dataset_name == "sysu_mm01":
        dataset = sysu
    else:
        write_market1501(tmp_path / "m", train_ids=2, test_ids=6, images_per_camera=2, progress=False)
        dataset = load_dataset("market1501", tmp_path / "m")
    rng = np.random.default_rng(0)
    query = rng.normal(size=(len(dataset.query), 16)).astype(np.float32)
    gallery = rng.normal(size=(len(dataset.gallery), 16)).astype(np.float32)
    rankings = headline_ranking(dataset, query, gallery)
    # mAP recomputed from the figure's ranking equals the evaluation code's.
    aps = []
    for q, ranked in enumerate(rankings):
        hits = np.array([dataset.gallery[i].pid == dataset.query[q].pid for i in ranked])
        if hits.any():
            positions = np.flatnonzero(hits)
            aps.append(np.mean(np.arange(1, len(positions) + 1) / (positions + 1)))
    assert np.mean(aps) == pytest.approx(score(dataset, query, gallery, trials=1)["mAP"])
    # and the order is by distance.
    distance = cosine_distance(query[:1], gallery)[0]
    assert np.all(np.diff(distance[rankings[0]]) >= 0)


@pytest.mark.slow
def test_retrieval_and_distribution_figures(sysu, tmp_path):
    torch.manual_seed(0)
    model = build("haresformer_tiny", image_size=(64, 32)).eval()
    retrieval = run_retrieval(model, sysu, tmp_path, queries=3, top_k=5)
    assert len(retrieval["rankings"]) == 3 and all(len(r) == 5 for r in retrieval["rankings"])
    distribution = run_distribution(model, sysu, tmp_path, max_images=60)
    assert -1 <= distribution["inter_mean"] <= 1 and distribution["pairs"]["intra"] > 0
    for name in ("retrieval.png", "distribution.png"):
        assert (tmp_path / name).stat().st_size > 10_000


@pytest.mark.slow
def test_gradcam_is_faithful_on_a_trained_model(trained_fusionreid):
    """Blanking the fifth of the pixels Grad-CAM ranks highest (maps averaged over the
    layers) lowers the explained similarity more than blanking the fifth it ranks
    lowest, on most images."""
    model, dataset, _, _ = trained_fusionreid
    pairs = probe_pairs(dataset, 24)
    queries, _ = model_input(model, [q for q, _ in pairs])
    references, _ = model_input(model, [r for _, r in pairs])
    with torch.no_grad():
        original = model(queries)
        reference = model(references)
    heatmap = np.mean(list(similarity_gradcam(model, queries, reference).values()), axis=0)
    # Random tie-breaking: flat (zero) stretches must not be ranked by pixel position.
    flat = heatmap.reshape(len(pairs), -1) + np.random.default_rng(0).uniform(0, 1e-6, (len(pairs), heatmap[0].size))
    share = flat.shape[1] // 5
    order = np.argsort(flat, axis=1)
    explained = F.cosine_similarity(original, reference)
    moved = {}
    for name, chosen in (("top", order[:, -share:]), ("bottom", order[:, :share])):
        mask = np.zeros_like(flat, dtype=bool)
        np.put_along_axis(mask, chosen, True, axis=1)
        blanked = queries.clone()
        blanked[torch.from_numpy(mask.reshape(heatmap.shape))[:, None].expand_as(blanked)] = 0.0  # the mean pixel
        with torch.no_grad():
            moved[name] = (explained - F.cosine_similarity(model(blanked), reference)).numpy()
    assert (moved["top"] > moved["bottom"]).mean() > 0.5, moved


@pytest.mark.slow
def test_viz_command_writes_figure_and_json(trained_fusionreid, tmp_path):
    from hybreid.models.checkpoint import save_model

    model, _, root, options = trained_fusionreid
    model_file = tmp_path / "model.pt"
    save_model(model_file, model, "fusionreid_tiny", options)
    result = subprocess.run([sys.executable, "-m", "hybreid.cli", "viz", "attention", "--checkpoint", str(model_file),
                             "--dataset", "market1501", "--root", str(root), "--out", str(tmp_path / "figures")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "figures" / "attention.json").read_text())
    assert "HTM1 SEU (CNN)" in saved["layers"] and (tmp_path / "figures" / "attention.png").stat().st_size > 10_000
