"""Every typed config refuses an unknown key with a suggestion and exit status 2: training
(file, `_base_` chain and key=value overrides), the site, the site spec of the synthetic
scenes, the camera graph, a thresholds file, and the model and loss options."""

import json

import pytest
import yaml

from hybreid.cli import main
from hybreid.train.config import resolve_config


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    return code, capsys.readouterr().err


def test_training_refuses_a_typo_in_an_override_with_a_suggestion(capsys):
    code, err = run_cli(["train", "--config", "configs/train/fusionreid_synthetic.yaml", "optim.epoch=1"], capsys)
    assert code == 2
    assert "unknown key 'optim.epoch'; did you mean 'epochs'?" in err


def test_training_refuses_a_typo_in_a_file_that_inherits_a_shipped_recipe(tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    base = "configs/train/haresformer_synthetic.yaml"
    recipe.write_text(yaml.safe_dump({"_base_": str((tmp_path / "..").resolve() / "absent.yaml"), "seed": 1}))
    code, err = run_cli(["train", "--config", str(recipe)], capsys)
    assert code == 2 and "absent.yaml does not exist" in err
    from hybreid.config import find_config

    recipe.write_text(yaml.safe_dump({"_base_": str(find_config(base).resolve()), "sampler": {"num_instance": 2}}))
    code, err = run_cli(["train", "--config", str(recipe)], capsys)
    assert code == 2
    assert "unknown key 'sampler.num_instance'; did you mean 'num_instances'?" in err


def test_a_base_chain_resolves_and_a_cycle_is_refused(tmp_path):
    from hybreid.errors import UserError

    config = resolve_config("configs/train/haresformer_synthetic.yaml", {})
    # From the shared base, overridden by the recipe, with the schema's defaults beneath.
    assert config.optim.name == "adam" and config.optim.lr == 3.0e-3
    assert config.data.pad == 2 and config.data.erasing == 0.0 and config.data.workers == 0
    loop_a, loop_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    loop_a.write_text("_base_: b.yaml\n")
    loop_b.write_text("_base_: a.yaml\n")
    with pytest.raises(UserError, match="inherits itself"):
        resolve_config(loop_a, {})


def test_model_and_loss_options_are_checked_against_the_family(capsys):
    code, err = run_cli(["train", "--config", "configs/train/fusionreid_synthetic.yaml", "loss.label_smothing=0.2"],
                        capsys)
    assert code == 2 and "did you mean 'label_smoothing'?" in err
    code, err = run_cli(["train", "--config", "configs/train/haresformer_synthetic.yaml", "model_options.poling=avg"],
                        capsys)
    assert code == 2 and "did you mean 'pooling'?" in err


@pytest.mark.parametrize("command, key, document", [
    (["edge", "run", "--config"], "camras", "site"),
    (["edge", "scenes", "--out", "OUT", "--site"], "peple", "spec"),
])
def test_site_and_scene_spec_refuse_a_typo(tmp_path, capsys, command, key, document):
    from hybreid.config import find_config

    shipped = find_config("configs/site.example.yaml" if document == "site" else "configs/site_scenes.yaml")
    data = yaml.safe_load(shipped.read_text())
    data[key] = data.pop(key.replace("camras", "cameras").replace("peple", "people"), 1)
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    argv = [part.replace("OUT", str(tmp_path / "out")) for part in command] + [str(path)]
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert f"unknown key '{key}'; did you mean" in err


def test_a_thresholds_file_refuses_a_typo(tmp_path, capsys):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"same_modality": {"threshold": 0.8}, "cross_modalty": {"threshold": 0.7}}))
    code, err = run_cli(["matcher", "run", "--db", str(tmp_path / "g.sqlite"), "--thresholds", str(path)], capsys)
    assert code == 2
    assert "did you mean 'cross_modality'?" in err


@pytest.mark.parametrize("derived, base", [("fusionreid_dukemtmc", "fusionreid_market1501"),
                                           ("fusionreid_msmt17", "fusionreid_market1501"),
                                           ("haresformer_regdb", "haresformer_sysu_mm01"),
                                           ("haresformer_llcm", "haresformer_sysu_mm01")])
def test_a_paper_recipe_is_its_base_on_another_dataset(derived, base):
    one, other = resolve_config(f"configs/train/{derived}.yaml", {}), resolve_config(f"configs/train/{base}.yaml", {})
    assert one.dataset.name == derived.split("_", 1)[1] and one.output == f"runs/{derived}"
    assert one.model_dump(exclude={"dataset", "output"}) == other.model_dump(exclude={"dataset", "output"})


def test_a_camera_graph_refuses_a_typo(tmp_path, capsys):
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump({"sites": {"lobby": [{"cameras": ["cam1", "cam2"], "min_s": 6, "maxs": 20}]}}))
    code, err = run_cli(["matcher", "run", "--db", str(tmp_path / "g.sqlite"), "--camera-graph", str(path)], capsys)
    assert code == 2
    assert "did you mean 'max_s'?" in err
