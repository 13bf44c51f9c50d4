"""Device bundles as an attacker would hand them over: member names, links, manifests, signatures."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from hybreid.cli import main
from hybreid.contract import ModelContract, set_metadata
from hybreid.export.bundle import create_bundle, generate_key, install_bundle, verify_bundle
from hybreid.inference.engine_cache import BuildOptions


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    """A small ONNX graph carrying a hybreid contract: what a bundle checks, without 68 MB of weights."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["embeddings"])], "tiny",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    contract = ModelContract(model="tiny_identity", weights_sha256="0123456789abcdef", embedding_dim=4,
                             input_name="images", output_name="embeddings", layout="NCHW", height=2, width=2,
                             mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), preprocess_in_graph=False, config={})
    set_metadata(model, contract)
    path = tmp_path_factory.mktemp("bundle_model") / "m.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("keys")
    return {name: generate_key(folder / name) for name in ("ours", "theirs")}


def _members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _write(path: Path, members: list[tuple[str, bytes | None, str]]) -> Path:
    """A .tar.gz of (name, data, kind) members; kind is file, symlink, hardlink or dir."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "dir": tarfile.DIRTYPE}[kind]
            info.linkname = "/etc/passwd" if kind != "dir" else ""
            tar.addfile(info)
    return path


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _manifest_variant(original: dict[str, bytes], **changes) -> list[tuple[str, bytes, str]]:
    manifest = json.loads(original["manifest.json"])
    for key, value in changes.items():
        manifest[key] = value
    return [("manifest.json", json.dumps(manifest).encode(), "file")] + [
        (name, data, "file") for name, data in original.items() if name != "manifest.json"]


def hostile_bundles(good: Path, onnx_bytes: bytes) -> dict[str, list[tuple[str, bytes | None, str]]]:
    """Each a bundle that must be refused, keyed by what is wrong with it."""
    original = _members(good)
    manifest = json.loads(original["manifest.json"])
    digest = hashlib.sha256(b"pwned").hexdigest()
    traversal = dict(manifest, files={"onnx": {"name": "../../pwned", "sha256": digest, "bytes": 5}})
    absolute = dict(manifest, files={"onnx": {"name": "/tmp/pwned", "sha256": digest, "bytes": 5}})
    return {
        "manifest names ../../pwned": [("manifest.json", json.dumps(traversal).encode(), "file"),
                                       ("../../pwned", b"pwned", "file")],
        "manifest names an absolute path": [("manifest.json", json.dumps(absolute).encode(), "file"),
                                            ("/tmp/pwned", b"pwned", "file")],
        "member with a dot-dot path": [*_manifest_variant(original), ("../escape.onnx", b"x", "file")],
        "member in a sub-folder": [*_manifest_variant(original), ("sub/model.onnx", b"x", "file")],
        "model.onnx is a symlink": [("manifest.json", original["manifest.json"], "file"),
                                    ("model.onnx", None, "symlink")],
        "model.onnx is a hard link": [("manifest.json", original["manifest.json"], "file"),
                                      ("model.onnx", None, "hardlink")],
        "a directory member": [*_manifest_variant(original), ("model.fp16.onnx", None, "dir")],
        "model.onnx twice": [*_manifest_variant(original), ("model.onnx", b"second copy", "file")],
        "model name with ../": _manifest_variant(original, model="../../evil"),
        "model name with a slash": _manifest_variant(original, model="a/b"),
        "model name starting with a dot": _manifest_variant(original, model=".."),
        "weights hash with a slash": _manifest_variant(original, weights_sha256="x/../../y"),
        "unknown manifest key": _manifest_variant(original, surprise=1),
        "unknown build option": _manifest_variant(original, build=dict(manifest["build"], turbo=True)),
        "build precision a list": _manifest_variant(original, build=dict(manifest["build"], precision=["fp16"])),
        "max batch a string": _manifest_variant(original, build=dict(manifest["build"], max_batch="32")),
        "unknown format": _manifest_variant(original, format="hybreid-bundle-v9"),
        "manifest without model": [("manifest.json", json.dumps({k: v for k, v in manifest.items()
                                                                 if k != "model"}).encode(), "file"),
                                   ("model.onnx", onnx_bytes, "file")],
        "files an array": _manifest_variant(original, files=[]),
        "unknown role": _manifest_variant(original, files={"weights": manifest["files"]["onnx"]}),
        "role under another file's name": _manifest_variant(
            original, files={"onnx": dict(manifest["files"]["onnx"], name="model.fp16.onnx")}),
        "hash not hex": _manifest_variant(original, files={"onnx": dict(manifest["files"]["onnx"], sha256="z" * 64)}),
        "negative size": _manifest_variant(original, files={"onnx": dict(manifest["files"]["onnx"], bytes=-1)}),
        "manifest not JSON": [("manifest.json", b"{not json", "file"), ("model.onnx", onnx_bytes, "file")],
        "manifest a list": [("manifest.json", b"[]", "file"), ("model.onnx", onnx_bytes, "file")],
        "no manifest": [("model.onnx", onnx_bytes, "file")],
        "listed file missing": [("manifest.json", original["manifest.json"], "file")],
        "unlisted calibration cache": [*_manifest_variant(original), ("calibration.cache", b"TRT-1\n", "file")],
        "model altered": [("manifest.json", original["manifest.json"], "file"),
                          ("model.onnx", onnx_bytes[:-4] + b"XXXX", "file")],
        "huge manifest": [("manifest.json", b" " * (2 << 20), "file"), ("model.onnx", onnx_bytes, "file")],
    }


@pytest.mark.slow
def test_hostile_bundles_are_refused_and_nothing_lands_outside(onnx_file, tmp_path):
    good = create_bundle(tmp_path / "good.tar.gz", onnx_file)
    cases = hostile_bundles(good, onnx_file.read_bytes())
    assert len(cases) >= 30
    device = tmp_path / "sandbox" / "device"
    device.mkdir(parents=True)
    bundle = tmp_path.parent / f"{tmp_path.name}-bad.tar.gz"
    before = _tree(tmp_path)
    for name, members in cases.items():
        _write(bundle, members)
        assert main(["bundle", "install", str(bundle), "--dir", str(device)]) == 2, name
        assert main(["bundle", "verify", str(bundle)]) == 2, name
    assert _tree(tmp_path) == before
    assert not list(device.iterdir())
    assert not Path("/tmp/pwned").exists()


def test_unsigned_and_wrongly_signed_bundles_are_refused_with_trust(onnx_file, keys, tmp_path, capsys):
    (ours, ours_public), (theirs, _) = keys["ours"], keys["theirs"]
    signed = create_bundle(tmp_path / "signed.tar.gz", onnx_file, sign=ours)
    unsigned = create_bundle(tmp_path / "unsigned.tar.gz", onnx_file)
    foreign = create_bundle(tmp_path / "foreign.tar.gz", onnx_file, sign=theirs)
    verified = verify_bundle(signed, trust=[ours_public])
    assert verified.signed_by and verified.signed
    # what `bundle install --build-engine` builds with: the manifest's build settings, typed
    assert verified.manifest.build_options() == BuildOptions(**json.loads(_members(signed)["manifest.json"])["build"])
    assert verify_bundle(signed).signed_by is None  # without --trust the signature is not checked
    folder = install_bundle(signed, tmp_path / "device", trust=[ours_public])
    assert (folder / "model.onnx").read_bytes() == onnx_file.read_bytes() and (folder / "manifest.sig").is_file()

    # The manifest re-signed by nobody: altered after signing, hashes updated to match a new model.
    members = _members(signed)
    altered_manifest = json.loads(members["manifest.json"])
    altered_manifest["build"]["max_batch"] = 64
    tampered = _write(tmp_path / "tampered.tar.gz", [("manifest.json", json.dumps(altered_manifest).encode(), "file"),
                                                      ("manifest.sig", members["manifest.sig"], "file"),
                                                      ("model.onnx", members["model.onnx"], "file")])
    for bundle, reason in ((unsigned, "is not signed"), (foreign, "matches none"), (tampered, "matches none")):
        capsys.readouterr()
        assert main(["bundle", "install", str(bundle), "--dir", str(tmp_path / "other"),
                     "--trust", str(ours_public)]) == 2
        assert reason in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    assert main(["bundle", "verify", str(signed), "--trust", str(ours_public)]) == 0
    assert "signed by trusted key" in capsys.readouterr().out


def test_keys_and_signing_refuse_bad_key_files(onnx_file, keys, tmp_path, capsys):
    ours, ours_public = keys["ours"]
    assert ours.stat().st_mode & 0o777 == 0o600
    not_a_key = tmp_path / "notakey.pem"
    not_a_key.write_text("hello")
    cases = [
        ["bundle", "keygen", "--out", str(ours)],  # exists already
        ["bundle", "create", "--artifact", str(onnx_file), "--out", str(tmp_path / "b.tar.gz"),
         "--sign", str(ours_public)],
        ["bundle", "create", "--artifact", str(onnx_file), "--out", str(tmp_path / "b.tar.gz"),
         "--sign", str(not_a_key)],
        ["bundle", "create", "--artifact", str(onnx_file), "--out", str(tmp_path / "b.tar.gz"),
         "--sign", str(tmp_path / "missing")],
        ["bundle", "verify", str(tmp_path / "missing.tar.gz")],
    ]
    signed = create_bundle(tmp_path / "s.tar.gz", onnx_file, build=BuildOptions("fp32"), sign=ours)
    cases += [["bundle", "verify", str(signed), "--trust", str(ours)],  # a private key is not a public key
              ["bundle", "verify", str(signed), "--trust", str(not_a_key)]]
    for argv in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("hybreid: error: ") and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "b.tar.gz").exists()


def test_a_typo_in_the_build_options_of_a_manifest_gets_a_suggestion(onnx_file, tmp_path, capsys):
    good = create_bundle(tmp_path / "good.tar.gz", onnx_file)
    original = _members(good)
    build = json.loads(original["manifest.json"])["build"]
    build["max_bacth"] = build.pop("max_batch")
    bundle = _write(tmp_path / "typo.tar.gz", _manifest_variant(original, build=build))
    capsys.readouterr()
    assert main(["bundle", "verify", str(bundle)]) == 2
    assert "did you mean 'max_batch'?" in capsys.readouterr().err


def _sparse_member(name: str, stored: bytes, declared: int) -> bytes:
    """A GNU sparse tar header and data: ``stored`` bytes in the archive that expand to
    ``declared`` bytes when read (an old-GNU 'S' member, which tarfile reads)."""
    info = tarfile.TarInfo(name)
    info.size = len(stored)
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:398] = b"%011o\0" % 0  # the one stored run starts at offset 0...
    header[398:410] = b"%011o\0" % len(stored)  # ...and holds the stored bytes
    header[483:495] = b"\x80" + declared.to_bytes(11, "big")  # the size it expands to (base-256)
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header[:512])
    padding = b"\0" * (-len(stored) % 512)
    return bytes(header[:512]) + stored + padding


def test_a_member_declaring_a_terabyte_is_refused_before_it_is_read(onnx_file, keys, tmp_path, capsys):
    """An 850-byte sparse member declaring 1 TiB, in a bundle signed by a trusted key, was hashed
    for hours by `verify` and `install --trust`."""
    private, public = keys["ours"]
    good = create_bundle(tmp_path / "good.tar.gz", onnx_file, sign=private)
    original = _members(good)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("manifest.json", "manifest.sig"):
            info = tarfile.TarInfo(name)
            info.size = len(original[name])
            tar.addfile(info, io.BytesIO(original[name]))
        tar.fileobj.write(_sparse_member("model.onnx", b"x" * 850, 1 << 40))
        tar.offset += len(_sparse_member("model.onnx", b"x" * 850, 1 << 40))
    import gzip

    hostile = tmp_path / "sparse.tar.gz"
    hostile.write_bytes(gzip.compress(raw.getvalue()))
    with tarfile.open(hostile) as tar:
        assert tar.getmember("model.onnx").size == 1 << 40  # what a reader of the archive is told
    for argv in (["bundle", "verify", str(hostile)],
                 ["bundle", "install", str(hostile), "--dir", str(tmp_path / "device"), "--trust", str(public)]):
        assert main(argv) == 2
        assert "declares 1099511627776 bytes" in capsys.readouterr().err
    assert not (tmp_path / "device").exists()


@pytest.mark.slow
def test_an_older_bundle_is_not_installed_over_a_newer_one(onnx_file, tmp_path, capsys):
    """An older bundle installed over a newer one was accepted silently and left the newer one's
    files beside it."""
    import time

    from hybreid.contract import read_onnx_contract

    newer_model = tmp_path / "newer.onnx"
    newer_model.write_bytes(onnx_file.read_bytes())
    import onnx

    model = onnx.load(str(newer_model))
    newer_contract = {**read_onnx_contract(onnx_file).__dict__, "weights_sha256": "fedcba9876543210"}
    set_metadata(model, ModelContract(**newer_contract))
    onnx.save(model, str(newer_model))
    older = create_bundle(tmp_path / "older.tar.gz", onnx_file)
    time.sleep(1.1)  # `created` counts seconds
    newer = create_bundle(tmp_path / "newer.tar.gz", newer_model)
    device = tmp_path / "device"
    assert main(["bundle", "install", str(newer), "--dir", str(device)]) == 0
    assert main(["bundle", "install", str(older), "--dir", str(device)]) == 2
    assert "refusing a downgrade" in capsys.readouterr().err
    assert sorted(p.name for p in device.iterdir()) == ["installed.json", "tiny_identity",
                                                        "tiny_identity-fedcba9876543210"]
    assert main(["bundle", "install", str(older), "--dir", str(device), "--allow-downgrade"]) == 0
    assert sorted(p.name for p in device.iterdir()) == ["installed.json", "tiny_identity",
                                                        "tiny_identity-0123456789abcdef"]
    assert json.loads((device / "installed.json").read_text())["tiny_identity"]["folder"] == \
        "tiny_identity-0123456789abcdef"
    # A site file names <dir>/<model>/model.onnx once: the link follows the installed bundle.
    current = device / "tiny_identity"
    assert current.is_symlink() and current.resolve() == (device / "tiny_identity-0123456789abcdef").resolve()
    assert (current / "model.onnx").read_bytes() == onnx_file.read_bytes()
    # A folder of the model's name that hybreid did not make is never replaced.
    current.unlink()
    current.mkdir()
    assert main(["bundle", "install", str(newer), "--dir", str(device)]) == 2
    assert "is not a link hybreid made" in capsys.readouterr().err and current.is_dir()


def test_a_bundle_refuses_variants_of_another_model_or_for_another_target(onnx_file, tmp_path, capsys):
    import onnx

    from hybreid.contract import read_onnx_contract

    contract = read_onnx_contract(onnx_file)
    variants = {}
    changes_of = {"other-weights": {"weights_sha256": "fedcba9876543210", "precision": "int8-tensorrt-minmax"},
                  "cpu-int8": {"precision": "int8-cpu-minmax", "cpu_isa": "avx2"}, "fp32-as-fp16": {}}
    for name, changes in changes_of.items():
        model = onnx.load(str(onnx_file))
        set_metadata(model, ModelContract(**{**contract.__dict__, **changes}))
        variants[name] = tmp_path / f"{name}.onnx"
        onnx.save(model, str(variants[name]))
    cases = {"other-weights": ("--int8-artifact", "not a copy of"),
             "cpu-int8": ("--int8-artifact", "--target tensorrt"),
             "fp32-as-fp16": ("--fp16-artifact", "export onnx --fp16")}
    for name, (flag, message) in cases.items():
        out = tmp_path / f"{name}.tar.gz"
        assert main(["bundle", "create", "--artifact", str(onnx_file), flag, str(variants[name]), "--out",
                     str(out)]) == 2
        assert message in capsys.readouterr().err and not out.exists()
