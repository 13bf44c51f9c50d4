"""Device bundles: what a camera box needs to build its engine and run, with hashes and a signature.

A bundle is one ``.tar.gz`` holding the ONNX model, its FP16 and Q/DQ INT8 variants and
the INT8 calibration cache when present, the person detector a real camera runs
(``detector.onnx``, from ``hybreid detector fetch``) when given, and ``manifest.json``: file hashes, the model
contract, the intended engine build options and the toolkit version. Signed with
``--sign KEY`` it also holds ``manifest.sig``, an Ed25519 signature of the manifest's
exact bytes; since the manifest names every file's SHA-256, the signature covers them all.

A bundle is untrusted input until verified. Verification reads only what it expects:
every member must be a regular file with one of the known names (no paths, no ``..``,
no links, no duplicates), the manifest must pass its schema (the model name and hash end
up in a folder name), every file must match its hash, and with ``--trust PUBKEY`` the
signature must verify against a trusted key. A device installs the bundle and builds
its engine on first start: engines are built on the target, never copied between
devices. Torch-free (runs on the device).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from hybreid import __version__
from hybreid.contract import read_onnx_contract
from hybreid.errors import UserError, validation_problem
from hybreid.inference.engine_cache import BuildOptions, file_sha256

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
FORMAT = "hybreid-bundle-v1"
ROLES = {"onnx": "model.onnx", "fp16": "model.fp16.onnx", "int8_qdq": "model.int8.qdq.onnx",
         "calibration_cache": "calibration.cache", "detector": "detector.onnx"}
MEMBERS = {MANIFEST, SIGNATURE, *ROLES.values()}
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILE_BYTES = 16 << 30  # the paper models are 0.5 GB in FP32; a member declaring more is refused
INSTALLED = "installed.json"  # in the models folder: which bundle of each model is installed

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# The model name and weights hash form the install folder's name: no separators, no dots first.
SafeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FileEntry(_Strict):
    name: str
    sha256: Sha256
    bytes: int = Field(ge=0, le=MAX_FILE_BYTES)


class BuildSettings(_Strict):
    precision: Literal["fp32", "fp16", "int8"]
    min_batch: int = Field(default=1, ge=1, le=4096)
    opt_batch: int = Field(default=8, ge=1, le=4096)
    max_batch: int = Field(default=32, ge=1, le=4096)
    workspace_mib: int = Field(default=2048, ge=1, le=1 << 20)
    strongly_typed: bool = False


class Manifest(_Strict):
    format: Literal["hybreid-bundle-v1"]
    # UTC, to the second: compared as text to tell an older bundle from a newer one
    created: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")]
    toolkit: str
    model: SafeName
    weights_sha256: SafeName
    contract: dict[str, str]
    build: BuildSettings
    files: dict[Literal["onnx", "fp16", "int8_qdq", "calibration_cache", "detector"], FileEntry]
    engine: str = ""
    # the detector's provenance (its source package and version, licence), from its metadata
    detector: dict[str, str] = {}

    def build_options(self) -> BuildOptions:
        build = self.build
        return BuildOptions(build.precision, build.min_batch, build.opt_batch, build.max_batch, build.workspace_mib,
                            build.strongly_typed)


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle's manifest once its members, hashes and (with trust) signature are checked."""

    manifest: Manifest
    signed: bool
    signed_by: str | None  # the trusted key's fingerprint; None when no trust was given


# -- keys and signatures (Ed25519, from the cryptography package) ---------------------------

def generate_key(private_path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (PEM, mode 0600) and its public key beside it (``.pub``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise UserError(f"{path} exists already; choose another name or move it aside")
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def _load_key(path: str | Path, private: bool):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    path = Path(path)
    kind = "private" if private else "public"
    if not path.is_file():
        raise UserError(f"{kind} key {path} does not exist")
    data = path.read_bytes()
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path} is not a PEM {kind} key without a passphrase ({exc})") from exc
    expected = Ed25519PrivateKey if private else Ed25519PublicKey
    if not isinstance(key, expected):
        raise UserError(f"{path} is not an Ed25519 {kind} key; make one with `hybreid bundle keygen`")
    return key


def key_fingerprint(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- create -----------------------------------------------------------------------------------

def _check_variants(contract, onnx: str | Path, fp16: str | Path | None, int8_qdq: str | Path | None) -> None:
    """The FP16 and INT8 files must be copies of the FP32 model's weights, in the form the
    device's TensorRT build reads: a bundle of mixed models would build an engine of another
    model than its manifest names."""
    for role, source, form in (("fp16", fp16, "fp16"), ("int8", int8_qdq, "int8-tensorrt")):
        if source is None or not Path(source).is_file():
            continue
        variant = read_onnx_contract(Path(source))
        if (variant.model, variant.weights_sha256) != (contract.model, contract.weights_sha256):
            raise UserError(f"--{role}-artifact {source} is {variant.identity}, not a copy of {onnx} "
                            f"({contract.identity}); convert that model")
        if not variant.precision.startswith(form):
            advice = ("calibrate it with `hybreid calibrate int8 --target tensorrt` (the device's TensorRT builds "
                      "the engine from it)" if role == "int8" else "write it with `hybreid export onnx --fp16`")
            raise UserError(f"--{role}-artifact {source} is a {variant.precision} copy; {advice}")


def _detector_provenance(detector: str | Path) -> dict[str, str]:
    """A detector ``hybreid detector fetch`` converted: its provenance; one sentence otherwise."""
    from hybreid.inference.nanodet import NanoDet, read_metadata

    NanoDet(detector)  # loads, and has NanoDet's outputs
    provenance = read_metadata(detector)
    if not provenance.get("source"):
        raise UserError(f"--detector {detector} carries no provenance: bundle the file `hybreid detector fetch` "
                        "wrote")
    return provenance


def create_bundle(out: str | Path, onnx: str | Path, fp16: str | Path | None = None,
                  int8_qdq: str | Path | None = None, calibration_cache: str | Path | None = None,
                  build: BuildOptions | None = None, sign: str | Path | None = None,
                  detector: str | Path | None = None) -> Path:
    out = Path(out)
    signer = _load_key(sign, private=True) if sign else None
    sources = {"onnx": onnx, "fp16": fp16, "int8_qdq": int8_qdq, "calibration_cache": calibration_cache,
               "detector": detector}
    files = {}
    for role, source in sources.items():
        if source is None:
            continue
        source = Path(source)
        if not source.is_file():
            raise UserError(f"{role} file {source} does not exist")
        files[role] = {"name": ROLES[role], "sha256": file_sha256(source), "bytes": source.stat().st_size}
    contract = read_onnx_contract(Path(onnx))
    _check_variants(contract, onnx, fp16, int8_qdq)
    build = build or BuildOptions(precision="int8" if int8_qdq else "fp16" if fp16 else "fp32")
    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "toolkit": f"hybreid {__version__}",
        "model": contract.model,
        "weights_sha256": contract.weights_sha256,
        "contract": contract.to_metadata(),
        "build": asdict(build),
        "files": files,
        "engine": "built on the target device at install or first start; never copied between devices",
        "detector": _detector_provenance(detector) if detector else {},
    }
    try:
        Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise UserError(f"cannot bundle {onnx}: {validation_problem(exc, Manifest)}") from exc
    data = json.dumps(manifest, indent=2).encode()
    members = [(MANIFEST, data)]
    if signer is not None:
        members.append((SIGNATURE, signer.sign(data)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:  # weights barely compress; be fast
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(payload), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(payload))
        for role, entry in files.items():
            tar.add(str(sources[role]), arcname=entry["name"])
    return out


# -- verify and install -----------------------------------------------------------------------

def _open(bundle: Path) -> tarfile.TarFile:
    if not bundle.is_file():
        raise UserError(f"bundle {bundle} does not exist")
    try:
        return tarfile.open(bundle, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"bundle {bundle} is damaged or not a hybreid bundle ({exc}); copy it again") from exc


def _members(tar: tarfile.TarFile, bundle: Path) -> dict[str, tarfile.TarInfo]:
    """The bundle's members by name, refusing anything but regular files with known names."""
    members: dict[str, tarfile.TarInfo] = {}
    for member in tar.getmembers():
        if member.name not in MEMBERS:
            raise UserError(f"bundle {bundle} holds {member.name!r}, which is not a bundle file (only "
                            f"{', '.join(sorted(MEMBERS))}); refusing it")
        if not member.isreg():
            raise UserError(f"bundle {bundle}: {member.name} is a link or special file, not a regular file; "
                            "refusing it")
        if member.name in members:
            raise UserError(f"bundle {bundle} holds {member.name} twice; refusing it")
        members[member.name] = member
    if MANIFEST not in members:
        raise UserError(f"bundle {bundle} has no {MANIFEST}; it is not a hybreid bundle")
    return members


def _check_signature(bundle: Path, manifest_bytes: bytes, signature: bytes | None,
                     trust: list[str | Path]) -> str:
    from cryptography.exceptions import InvalidSignature

    if signature is None:
        raise UserError(f"bundle {bundle} is not signed, and --trust asks for a signed bundle")
    keys = [_load_key(path, private=False) for path in trust]
    for key in keys:
        try:
            key.verify(signature, manifest_bytes)
        except InvalidSignature:
            continue
        return key_fingerprint(key)
    raise UserError(f"bundle {bundle}: its signature matches none of the {len(keys)} trusted key(s); it was "
                    "signed by someone else or altered")


def _verify_open(tar: tarfile.TarFile, bundle: Path, trust: list[str | Path] | None) -> VerifiedBundle:
    members = _members(tar, bundle)
    if members[MANIFEST].size > MAX_MANIFEST_BYTES:
        raise UserError(f"bundle {bundle}: its manifest is over {MAX_MANIFEST_BYTES} bytes; refusing it")
    manifest_bytes = tar.extractfile(members[MANIFEST]).read()
    signature = tar.extractfile(members[SIGNATURE]).read() if SIGNATURE in members else None
    signed_by = _check_signature(bundle, manifest_bytes, signature, trust) if trust else None
    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValidationError as exc:
        raise UserError(f"bundle {bundle}: its manifest is not valid ({validation_problem(exc, Manifest)})") from exc
    for role, entry in manifest.files.items():  # every size checked before anything is read
        if entry.name != ROLES[role]:
            raise UserError(f"bundle {bundle}: the manifest names {entry.name!r} for {role}, expected {ROLES[role]}")
        if entry.name not in members:
            raise UserError(f"bundle {bundle} lacks {entry.name}, which its manifest lists")
        if members[entry.name].size != entry.bytes:  # a sparse member may declare a terabyte
            raise UserError(f"bundle {bundle}: {entry.name} declares {members[entry.name].size} bytes, its "
                            f"manifest {entry.bytes}; refusing it")
    for role, entry in manifest.files.items():
        member = tar.extractfile(members[entry.name])
        digest = hashlib.sha256()
        for chunk in iter(lambda member=member: member.read(1 << 20), b""):
            digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            raise UserError(f"bundle {bundle}: {entry.name} ({role}) does not match its hash; "
                            "the bundle was altered or damaged in transit")
    unlisted = set(members) - {MANIFEST, SIGNATURE} - {entry.name for entry in manifest.files.values()}
    if unlisted:
        raise UserError(f"bundle {bundle} holds {', '.join(sorted(unlisted))}, which its manifest does "
                        "not list; refusing it")
    return VerifiedBundle(manifest, signature is not None, signed_by)


def _with_bundle(bundle: Path, work):
    """Run ``work(tar)`` on the opened bundle, a damaged archive becoming one clear error."""
    import zlib

    with _open(bundle) as tar:
        try:
            return work(tar)
        except UserError:
            raise
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise UserError(f"bundle {bundle} is damaged or incomplete ({exc.__class__.__name__}: {exc}); "
                            "copy it again") from exc


def verify_bundle(bundle: str | Path, trust: list[str | Path] | None = None) -> VerifiedBundle:
    """Check members, manifest schema, every file's hash and, with ``trust``, the signature."""
    bundle = Path(bundle)
    return _with_bundle(bundle, lambda tar: _verify_open(tar, bundle, trust))


def _point_current(target: Path, model: str, folder: Path) -> None:
    """``target/<model>`` becomes a link to the folder just installed, swapped in one rename: a
    site file names ``<dir>/<model>/model.onnx`` once, whatever bundle of the model is current."""
    link = target / model
    fresh = target / f".link-{model}-{os.getpid()}"
    fresh.unlink(missing_ok=True)
    fresh.symlink_to(folder.name, target_is_directory=True)
    fresh.replace(link)


def _installed(target: Path) -> dict:
    """What ``target`` holds: model name -> the installed bundle's folder and creation time."""
    from hybreid.files import read_regular_file

    record = target / INSTALLED
    if not record.exists():
        return {}
    try:
        data = json.loads(read_regular_file(record, "installed-bundles record", MAX_MANIFEST_BYTES))
    except ValueError as exc:
        raise UserError(f"{record} is damaged ({exc}); move it aside to install anyway") from None
    if not isinstance(data, dict):
        raise UserError(f"{record} is damaged (not a JSON object); move it aside to install anyway")
    return data


def install_bundle(bundle: str | Path, target: str | Path, trust: list[str | Path] | None = None,
                   allow_downgrade: bool = False) -> Path:
    """Verify, then unpack into ``target/<model>-<weights hash>/``; returns that folder.

    A model has one folder: the bundle is unpacked into a new folder beside it that then takes
    its place, and the folder of an earlier bundle of the model is removed, so no file of
    another bundle stays beside the new one. A bundle older than the installed one of its model
    (its manifest's ``created``) is refused unless ``allow_downgrade``. Verification and
    unpacking read the same open file, so a bundle swapped on disk in between cannot slip
    past the check.
    """
    import shutil
    import tempfile

    bundle = Path(bundle)
    target = Path(target).resolve()

    def install(tar: tarfile.TarFile) -> Path:
        verified = _verify_open(tar, bundle, trust)
        manifest = verified.manifest
        folder = target / f"{manifest.model}-{manifest.weights_sha256}"
        if folder.parent != target:  # the schema already refuses separators; this is the last word
            raise UserError(f"bundle {bundle} names a folder outside {target}; refusing it")
        link = target / manifest.model
        if link.exists() and not link.is_symlink():  # checked before anything is unpacked
            raise UserError(f"{link} is not a link hybreid made; move it aside so that it can point to the "
                            f"installed bundle of {manifest.model}")
        installed = _installed(target)
        previous = installed.get(manifest.model) if isinstance(installed.get(manifest.model), dict) else {}
        if str(previous.get("created", "")) > manifest.created and not allow_downgrade:
            raise UserError(f"bundle {bundle} (created {manifest.created}) is older than the installed "
                            f"{manifest.model} (created {previous['created']}); refusing a downgrade "
                            "(--allow-downgrade installs it anyway)")
        target.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix=".installing-", dir=target))
        try:
            names = [MANIFEST] + ([SIGNATURE] if verified.signed else []) + \
                [entry.name for entry in manifest.files.values()]
            for name in names:
                (fresh / name).write_bytes(tar.extractfile(name).read())
            fresh.chmod(0o755)
            old = target / str(previous.get("folder", ""))
            current = [folder] if folder.exists() else []
            if previous.get("folder") and old.parent == target and old != folder and old.is_dir():
                current.append(old)
            retired = [path.with_name(f".retired-{path.name}-{os.getpid()}") for path in current]
            for path, aside in zip(current, retired, strict=True):  # out of the way: the swap is one rename
                path.replace(aside)
            fresh.replace(folder)
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
        for aside in retired:
            shutil.rmtree(aside, ignore_errors=True)
        installed[manifest.model] = {"folder": folder.name, "created": manifest.created}
        record = target / INSTALLED
        record.with_suffix(".partial").write_text(json.dumps(installed, indent=2))
        record.with_suffix(".partial").replace(record)
        _point_current(target, manifest.model, folder)
        return folder

    return _with_bundle(bundle, install)
