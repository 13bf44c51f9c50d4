"""Every `hybreid` command in the README and in docs/ is one the CLI accepts; the cheap ones
run here, the rest run in the tests named in EXERCISED_BY (or in the demo). The README
stays short and points at every page of docs/."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hybreid.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

# Subcommand -> where it is exercised beyond parsing.
# Subcommand -> the test that runs it through the CLI ("code:" = through the functions it
# calls; the command itself is a thin argument parser over them, or needs a GPU).
EXERCISED_BY = {
    "models": "test_readme", "bench flops": "test_readme", "data synth": "test_cli", "train": "test_trainer",
    "eval": "code: test_trainer", "export onnx": "test_cli", "export engine": "code: test_export (no GPU)",
    "calibrate int8": "code: test_calibration", "calibrate threshold": "test_cli",
    "calibrate detector": "test_detector_nanodet", "bundle create": "test_cli",
    "bundle verify": "test_cli", "bundle install": "test_bundles", "bundle keygen": "test_bundles",
    "edge scenes": "test_cli", "site broker-acl": "test_broker_security",
    "edge run": "test_edge_e2e", "edge outbox-recover": "test_edge_stages", "matcher run": "test_matcher",
    "matcher query": "test_cli",
    "matcher purge": "test_cli", "bench latency": "code: test_benchmarks",
    "bench profile": "test_benchmarks", "bench train": "code: test_viz (its recipe)",
    "bench pipeline": "code: test_benchmarks", "bench matcher": "code: test_benchmarks",
    "bench identities": "code: test_demo", "detector fetch": "code: test_detector_nanodet (npm in `make test`)",
    "bench detector": "test_detector_nanodet", "bench site": "test_site_scenes", "bench tracks": "test_site_scenes",
    "bench policy": "test_site_scenes",
    "bench fidelity": "code: test_benchmarks", "viz gradcam": "code: test_viz",
    "viz attention": "test_viz", "viz retrieval": "code: test_viz", "viz distribution": "code: test_viz",
    "demo": "code: test_demo", "console": "test_console", "bench console": "test_console",
}
CHEAP = {"models", "bench flops"}


def readme_commands() -> list[list[str]]:
    """`hybreid ...` lines of the bash blocks of the README and docs/, continuation lines joined."""
    commands = []
    text = "\n".join(page.read_text() for page in PAGES)
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip().removesuffix("&").strip()  # `&`: run in the background
            if line.startswith("torchrun"):
                line = "hybreid " + line.split("hybreid.cli", 1)[1]
            if line.startswith("hybreid "):
                commands.append(shlex.split(line)[1:])
    return commands


def subcommand(argv: list[str]) -> str:
    words = [a for a in argv if not a.startswith("-")][:2]
    return " ".join(words) if " ".join(words) in EXERCISED_BY else words[0]


def test_readme_has_commands_for_every_part():
    names = {subcommand(argv) for argv in readme_commands()}
    for required in ("train", "eval", "export onnx", "calibrate int8", "bundle create", "edge run", "matcher run",
                     "bench flops", "demo", "viz gradcam"):
        assert required in names, f"neither the README nor docs/ show `hybreid {required}`"


def test_the_readme_is_short_and_links_every_page_of_the_docs():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in text, f"the README does not link docs/{page.name}"
    for page in PAGES:  # relative links between pages and to benchmarks/ lead to files that exist
        for target in re.findall(r"\]\((?!https?:)([^)#]+)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_readme_command_parses(argv):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on an unknown option or subcommand
        pytest.fail(f"README command `hybreid {' '.join(argv)}` is rejected by the CLI ({exc})")
    assert callable(args.func)
    assert subcommand(argv) in EXERCISED_BY, f"no test exercises `hybreid {subcommand(argv)}`"


# `bench flops --paper` counts every paper-size model (minutes); test_flops covers it.
@pytest.mark.slow
@pytest.mark.parametrize("argv", [a for a in readme_commands() if subcommand(a) in CHEAP and "--paper" not in a],
                         ids=lambda argv: " ".join(argv)[:60])
def test_cheap_readme_commands_run(argv, tmp_path):
    extra = ["--out", str(tmp_path / "flops")] if subcommand(argv) == "bench flops" else []
    result = subprocess.run([sys.executable, "-m", "hybreid.cli", *argv, *extra], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_the_training_page_writes_synthetic_data_where_the_recipes_read_it():
    """Each synthetic recipe's dataset.root is where docs/training.md's `data synth` writes its
    layout (the page once wrote data/synthetic_market, the recipe read data/synthetic_market1501)."""
    import yaml

    written = {}
    for argv in readme_commands():
        if argv[:2] == ["data", "synth"]:
            args = build_parser().parse_args(argv)
            written.setdefault(args.layout, set()).add(args.out)
    recipes = sorted((REPO / "hybreid" / "configs" / "train").glob("*_synthetic.yaml"))
    assert len(recipes) == 2
    for recipe in recipes:
        dataset = yaml.safe_load(recipe.read_text())["dataset"]
        assert dataset["root"] in written.get(dataset["name"], set()), \
            f"{recipe.name} reads {dataset['root']}, which no `hybreid data synth` of the docs writes"


def test_the_jetson_walkthrough_reads_what_its_commands_write():
    """docs/deployment.md's Jetson block needs a GPU and a dataset to run; what can be checked
    here is that each command reads the files an earlier one writes, and that the example site
    file looks where `bundle install` puts the model."""
    import yaml

    text = (REPO / "docs" / "deployment.md").read_text()
    block = re.search(r"## Deploying to a Jetson\n+```bash\n(.*?)```", text, flags=re.S).group(1)
    commands = [build_parser().parse_args(shlex.split(line.split("#", 1)[0])[1:])
                for line in block.replace("\\\n", " ").splitlines() if line.startswith("hybreid ")]
    by_verb = {" ".join(getattr(args, key) for key in vars(args) if key == "command" or key.endswith("_command")):
               args for args in commands}
    calibrate, create, install = by_verb["calibrate int8"], by_verb["bundle create"], by_verb["bundle install"]
    stem = Path(calibrate.artifact).stem
    assert create.int8_artifact == f"{calibrate.out}/{stem}.int8.tensorrt.minmax.onnx"
    assert create.calibration_cache == f"{calibrate.out}/{stem}.int8.tensorrt.minmax.cache"
    assert create.out == install.bundle
    site = yaml.safe_load((REPO / "configs" / "site.example.yaml").read_text())
    assert site["model"]["path"].startswith(f"{install.dir}/")  # <dir>/<model>: the installed bundle
