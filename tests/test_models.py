"""Model contracts at tiny size: shapes, gradients, determinism, batch independence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hybreid.errors import UserError
from hybreid.models import REGISTRY, TrainOutput, build, model_config

TINY = [name for name in REGISTRY if name.endswith("_tiny")]

# Every ablation switch of the papers, at tiny size: (registry name, overrides).
VARIANTS = [
    *[(name, {}) for name in TINY],
    ("fusionreid_tiny", {"structure": "seu"}),
    ("fusionreid_tiny", {"structure": "mfu_seu"}),
    ("fusionreid_tiny", {"structure": "mfu"}),
    ("fusionreid_tiny", {"share_seu": False, "share_mfu": True}),
    ("fusionreid_tiny", {"pooling": "avg", "depth": 3, "dim": 64}),
    ("fusionreid_tiny", {"vit_stride": 16, "lru_kernel": 3}),
    ("haresformer_tiny", {"cffm": False, "add": False}),
    ("haresformer_tiny", {"dsa": False, "hgae": False}),
    ("haresformer_tiny", {"num_heads": 2, "depth": 2, "dsa_stages": (3, 4)}),
]


def _images(model, n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *model.image_size, generator=generator)


def _expected_features(model) -> dict[str, int]:
    """Feature names and widths the model's own configuration implies."""
    config = model_config(model.model_name)
    if config["family"] == "fusionreid":
        dim = model.dmf.lru_cnn.pointwise[0].out_channels
        return {"cnn": model.cnn.dim, "vit": model.vit.dim, "cnn_lru": dim, "vit_lru": dim,
                "cnn_htm": dim, "vit_htm": dim}
    widths = model.re.widths
    expected = {"final": widths[-1]}
    if model.use_hgae:
        expected["hgae"] = widths[-1]
    if model.use_dsa:
        expected.update({f"stage{s}": widths[s - 1] for s in model.dsa_stages})
    return expected


@pytest.mark.parametrize(("name", "overrides"), VARIANTS)
def test_train_and_eval_outputs(name, overrides):
    model = build(name, **overrides)
    num_classes = model_config(name, **overrides)["num_classes"]
    model.train()
    out = model(_images(model, 4), torch.tensor([0, 1, 2, 3]))
    assert isinstance(out, TrainOutput)
    assert {k: v.shape[1] for k, v in out.features.items()} == _expected_features(model)
    assert all(v.shape[0] == 4 for v in out.features.values())
    assert out.logits and all(v.shape == (4, num_classes) for v in out.logits.values())

    model.eval()
    with torch.no_grad():
        embedding = model(_images(model, 3))
    assert embedding.shape == (3, model.embedding_dim)
    assert torch.allclose(embedding.norm(dim=1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize(("name", "overrides"), VARIANTS)
def test_every_trainable_parameter_gets_a_gradient(name, overrides):
    model = build(name, **overrides).train()
    # timm zero-initialises the last BN of each residual block, which blocks the
    # gradient to the block's convolutions at step 0 only; give them a real scale.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    labels = torch.tensor([0, 1, 0, 1])
    out = model(_images(model, 4), torch.tensor([0, 1, 2, 3]))
    # Cross-entropy on every logit and a metric-style term on every feature, as the
    # papers' losses have.
    loss = sum(F.cross_entropy(logits, labels) for logits in out.logits.values())
    loss = loss + sum(torch.cdist(f, f).mean() for f in out.features.values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_eval_is_deterministic_and_batch_independent(name):
    model = build(name).eval()
    images = _images(model, 7, seed=1)
    with torch.no_grad():
        batch = model(images)
        again = model(images)
        alone = torch.cat([model(images[i : i + 1]) for i in range(len(images))])
    assert torch.equal(batch, again)
    assert torch.allclose(alone, batch, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_bnneck_bias_is_frozen_and_classifiers_are_bias_free(name):
    model = build(name)
    necks = [m for m in model.modules() if type(m).__name__ == "BNNeck"]
    assert necks
    for neck in necks:
        assert not neck.bn.bias.requires_grad
        assert neck.classifier.bias is None


def test_cnn_keeps_last_stride_one():
    model = build("fusionreid_tiny")
    feature_map, _ = model.cnn(torch.rand(1, 3, *model.image_size))
    assert feature_map.shape[-2:] == (model.image_size[0] // 16, model.image_size[1] // 16)


@pytest.mark.slow
def test_overlapping_patch_grid_matches_the_paper():
    """ViT-B/16 at 256x128: stride 12 -> 21x10 = 210 patches, stride 16 -> 16x8 (FIELD-NOTES)."""
    s12 = build("fusionreid_vitb16_s12")
    s16 = build("fusionreid_vitb16_s16")
    assert s12.vit.grid == (21, 10) and s12.vit.embed.pos_embed.shape[1] == 211
    assert s16.vit.grid == (16, 8)
    assert s12.embedding_dim == 2048 + 768 * 5


def test_haresformer_token_counts_at_paper_size():
    """288x144 with patch 4, 2, 2, 1 on the previous map: 2593 / 649 / 163 / 163 tokens."""
    model = build("haresformer_h1l1")
    assert [te.embed.pos_embed.shape[1] for te in model.te] == [2593, 649, 163, 163]
    assert [te.embed.pos_embed.shape[2] for te in model.te] == [256, 512, 1024, 2048]


class TestCameraEmbedding:
    def test_unknown_camera_uses_the_mean_embedding(self):
        model = build("fusionreid_tiny").eval()
        with torch.no_grad():
            model.vit.camera_embed.normal_()
            model.vit.camera_embed[0] = model.vit.camera_embed[1:].sum(0) * -1  # make the mean zero...
            model.vit.camera_embed.add_(0.5)  # ...then exactly 0.5 everywhere
            images = _images(model, 2)
            unknown = model(images)
            table = model.vit.camera_embed.clone()
            model.vit.camera_embed.copy_(torch.full_like(table, 0.5))
            constant = model(images, torch.tensor([3, 4]))
        assert torch.allclose(unknown, constant, atol=1e-6)

    def test_camera_id_changes_the_embedding(self):
        model = build("fusionreid_tiny").eval()
        images = _images(model, 1).repeat(2, 1, 1, 1)
        with torch.no_grad():
            out = model(images, torch.tensor([0, 5]))
        assert not torch.allclose(out[0], out[1])

    def test_camera_outside_the_table_is_refused(self):
        model = build("fusionreid_tiny").eval()
        with pytest.raises(UserError, match="camids=None"):
            model(_images(model, 1), torch.tensor([6]))


class TestLocalWeights:
    def test_cnn_and_vit_weights_load_from_local_files(self, tmp_path):
        import timm

        resnet = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=2)
        torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
        torch.save({"state_dict": vit.state_dict()}, tmp_path / "vit.pth")
        model = build("fusionreid_tiny", cnn_weights=str(tmp_path / "resnet18.pth"),
                      vit_weights=str(tmp_path / "vit.pth"))
        assert torch.equal(model.cnn.backbone.conv1.weight, resnet.conv1.weight)
        assert torch.equal(model.vit.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)
        assert torch.equal(model.vit.embed.proj.weight, vit.patch_embed.proj.weight)
        # The 14x14 ImageNet grid is resampled to the overlapping 10x5 grid; the class
        # token's position is carried over unchanged.
        assert model.vit.embed.pos_embed.shape[1] == 1 + 10 * 5
        assert torch.equal(model.vit.embed.pos_embed[:, 0], vit.pos_embed[:, 0])

    def test_missing_file_is_one_clear_error(self, tmp_path):
        with pytest.raises(UserError, match="does not exist"):
            build("fusionreid_tiny", cnn_weights=str(tmp_path / "nope.pth"))

    def test_weights_of_another_architecture_are_refused(self, tmp_path):
        import timm

        torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "r18.pth")
        with pytest.raises(UserError, match="lacks"):
            build("haresformer_tiny", cnn="resnet34", cnn_weights=str(tmp_path / "r18.pth"))

    def test_corrupt_file_is_one_clear_error(self, tmp_path):
        (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
        with pytest.raises(UserError, match="cannot read"):
            build("fusionreid_tiny", cnn_weights=str(tmp_path / "bad.pth"))


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(UserError, match="known models"):
        build("fusionreid_huge")
    with pytest.raises(UserError, match="unknown option"):
        build("fusionreid_tiny", not_an_option=1)
    with pytest.raises(UserError, match="did you mean 'pooling'"):
        build("fusionreid_tiny", poling="avg")
    with pytest.raises(UserError, match="unknown option 'dims'"):  # a local variable of the constructor
        build("fusionreid_tiny", dims=[8])
    with pytest.raises(UserError, match="HTM structure"):
        build("fusionreid_tiny", structure="mfu_mfu")
