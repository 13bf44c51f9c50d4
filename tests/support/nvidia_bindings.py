"""NVIDIA's real Python bindings, fetched by pip and described for the conformance tests.

``python tests/support/nvidia_bindings.py .cache/nvidia-bindings`` (``make test`` runs it)
downloads the pinned wheels, compiles the stub libraries TensorRT's bindings link
against (``tensorrt_stubs.c``), imports each binding in a fresh interpreter and writes its
API as JSON (``dump_bindings_api.py``). Where pip's index or gcc is missing it says so;
the tests then skip with that sentence.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The versions a Jetson meets: TensorRT 10.3 (JetPack 6) and 11.4 (JetPack >= 7.2.2), with
# the cuda-python of their CUDA generation.
TENSORRT = ("10.3.0", "11.4.0.106")
CUDA = ("12.9.10", "13.5.0")
CUDA_PATHFINDER = "1.9.1"
PAIRS = {"10.3.0": "12.9.10", "11.4.0.106": "13.5.0"}
STUB_LIBRARIES = ("nvinfer", "nvonnxparser", "nvinfer_plugin")


def api_path(root: Path, kind: str, version: str) -> Path:
    return Path(root) / f"{kind}-{version}.json"


def missing_reason(root: Path) -> str | None:
    """Why the conformance tests cannot run here (None when every description is present)."""
    root = Path(root)
    wanted = [api_path(root, "tensorrt", v) for v in TENSORRT] + [api_path(root, "cuda", v) for v in CUDA]
    absent = [path.name for path in wanted if not path.is_file()]
    if not absent:
        return None
    why = root / "FAILED"
    detail = why.read_text().strip() if why.is_file() else "run `make test`, which fetches them"
    return f"NVIDIA's bindings are not described under {root} ({', '.join(absent)} missing): {detail}"


def _wheel(spec: str, into: Path) -> Path:
    name = spec.split("==")[0].replace("-", "_")
    found = sorted(into.glob(f"{name}-{spec.split('==')[1]}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "-d", str(into), spec], check=True, capture_output=True, text=True)
        found = sorted(into.glob(f"{name}-{spec.split('==')[1]}-*.whl"))
    return found[0]


def _unpack(wheel: Path, into: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            target = (into / member).resolve()
            if not target.is_relative_to(into.resolve()):
                raise RuntimeError(f"{wheel.name} holds a member outside its folder: {member}")
        archive.extractall(into)


def _dump(kind: str, pythonpath: Path, out: Path, libraries: Path | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    if libraries is not None:
        env["LD_LIBRARY_PATH"] = str(libraries)
    subprocess.run([sys.executable, str(HERE / "dump_bindings_api.py"), kind, str(out)], env=env, check=True,
                   capture_output=True, text=True, cwd=pythonpath)


def prepare(root: Path) -> None:
    root = Path(root).resolve()
    wheels, work = root / "wheels", root / "work"
    wheels.mkdir(parents=True, exist_ok=True)
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is not installed: it compiles the stub libraries TensorRT's bindings link against")
    for version in TENSORRT:
        major = version.split(".")[0]
        folder = work / f"tensorrt-{version}"
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "lib").mkdir(parents=True)
        _unpack(_wheel(f"tensorrt-cu12-bindings=={version}", wheels), folder)
        for library in STUB_LIBRARIES:
            subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(folder / "lib" / f"lib{library}.so.{major}"),
                            str(HERE / "tensorrt_stubs.c")], check=True, capture_output=True, text=True)
        _dump("tensorrt", folder, api_path(root, "tensorrt", version), folder / "lib")
    pathfinder = _wheel(f"cuda-pathfinder=={CUDA_PATHFINDER}", wheels)
    for version in CUDA:
        folder = work / f"cuda-{version}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        _unpack(_wheel(f"cuda-bindings=={version}", wheels), folder)
        _unpack(pathfinder, folder)
        _dump("cuda", folder, api_path(root, "cuda", version))
    shutil.rmtree(work)


def main(root: str) -> int:
    failed = Path(root) / "FAILED"
    try:
        prepare(Path(root))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        reason = f"{exc} {detail.strip().splitlines()[-1] if detail.strip() else ''}".strip()
        Path(root).mkdir(parents=True, exist_ok=True)
        failed.write_text(reason + "\n")
        print(f"NVIDIA's bindings could not be prepared ({reason}): the TensorRT conformance tests will say so")
        return 0
    failed.unlink(missing_ok=True)
    (Path(root) / ".done").touch()  # `make` reruns this until it succeeds once
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
