"""Device bundles: what a camera box needs to build its engine and run, with hashes.

A bundle is one ``.tar.gz`` holding the ONNX model, its FP16 and Q/DQ INT8 variants and
the INT8 calibration cache when present, and ``manifest.json``: file hashes, the model
contract, the intended engine build options and the toolkit version. A device verifies
the bundle, installs it and builds its engine on first start: engines are built on the
target, never copied between devices. Torch-free (runs on the device).
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from dataclasses import asdict
from pathlib import Path

from hybreid import __version__
from hybreid.errors import UserError
from hybreid.inference.engine_cache import BuildOptions, file_sha256

MANIFEST = "manifest.json"
ROLES = {"onnx": "model.onnx", "fp16": "model.fp16.onnx", "int8_qdq": "model.int8.qdq.onnx",
         "calibration_cache": "calibration.cache"}


def _onnx_contract(path: Path) -> dict[str, str]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a damaged file
        raise UserError(f"{path} is not a readable ONNX file; export it again") from exc
    meta = {p.key: p.value for p in model.metadata_props if p.key.startswith("hybreid.")}
    if "hybreid.model" not in meta:
        raise UserError(f"{path} has no hybreid contract; export it with `hybreid export onnx`")
    return meta


def create_bundle(out: str | Path, onnx: str | Path, fp16: str | Path | None = None,
                  int8_qdq: str | Path | None = None, calibration_cache: str | Path | None = None,
                  build: BuildOptions | None = None) -> Path:
    out = Path(out)
    sources = {"onnx": onnx, "fp16": fp16, "int8_qdq": int8_qdq, "calibration_cache": calibration_cache}
    files = {}
    for role, source in sources.items():
        if source is None:
            continue
        source = Path(source)
        if not source.is_file():
            raise UserError(f"{role} file {source} does not exist")
        files[role] = {"name": ROLES[role], "sha256": file_sha256(source), "bytes": source.stat().st_size}
    contract = _onnx_contract(Path(onnx))
    build = build or BuildOptions(precision="int8" if int8_qdq else "fp16" if fp16 else "fp32")
    manifest = {
        "format": "hybreid-bundle-v1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "toolkit": f"hybreid {__version__}",
        "model": contract["hybreid.model"],
        "weights_sha256": contract["hybreid.weights_sha256"],
        "contract": contract,
        "build": asdict(build),
        "files": files,
        "engine": "built on the target device at install or first start; never copied between devices",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:  # weights barely compress; be fast
        data = json.dumps(manifest, indent=2).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
        for role, entry in files.items():
            tar.add(str(sources[role]), arcname=entry["name"])
    return out


def _open(bundle: Path) -> tarfile.TarFile:
    if not bundle.is_file():
        raise UserError(f"bundle {bundle} does not exist")
    try:
        return tarfile.open(bundle, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"bundle {bundle} is damaged or not a hybreid bundle ({exc}); copy it again") from exc


def verify_bundle(bundle: str | Path) -> dict:
    """Check the manifest and every file's hash; returns the manifest."""
    import hashlib

    bundle = Path(bundle)
    with _open(bundle) as tar:
        try:
            manifest = json.loads(tar.extractfile(MANIFEST).read())
            if manifest.get("format") != "hybreid-bundle-v1":
                raise ValueError("unknown format")
            for role, entry in manifest["files"].items():
                member = tar.extractfile(entry["name"])
                digest = hashlib.sha256()
                for chunk in iter(lambda member=member: member.read(1 << 20), b""):
                    digest.update(chunk)
                if digest.hexdigest() != entry["sha256"]:
                    raise UserError(f"bundle {bundle}: {entry['name']} ({role}) does not match its hash; "
                                    "the bundle was altered or damaged in transit")
        except UserError:
            raise
        except (KeyError, ValueError, tarfile.TarError, OSError, EOFError, AttributeError) as exc:
            raise UserError(f"bundle {bundle} is damaged or incomplete ({exc.__class__.__name__}: {exc}); "
                            "copy it again") from exc
    return manifest


def install_bundle(bundle: str | Path, target: str | Path) -> Path:
    """Verify, then unpack into ``target/<model>-<weights hash>/``; returns that folder."""
    manifest = verify_bundle(bundle)
    folder = Path(target) / f"{manifest['model']}-{manifest['weights_sha256']}"
    folder.mkdir(parents=True, exist_ok=True)
    with _open(Path(bundle)) as tar:
        names = [MANIFEST] + [entry["name"] for entry in manifest["files"].values()]
        for name in names:
            (folder / name).write_bytes(tar.extractfile(name).read())
    return folder
