"""``hybreid calibrate int8|detector|threshold``."""

from __future__ import annotations

from hybreid.calibration.int8 import CPU_TARGETS, TARGETS
from hybreid.command_line import ARTIFACT_HELP, add_output, command, group, output_file, output_folder
from hybreid.data.datasets import READERS
from hybreid.errors import UserError
from hybreid.machine import CPU_ISAS


def _int8(args) -> None:
    from hybreid.calibration.report import run_int8
    from hybreid.data.datasets import load_dataset

    if args.cpu_isa and args.target not in CPU_TARGETS:
        raise UserError("--cpu-isa applies to --target cpu and openvino only (the tensorrt form is one form "
                        "for every GPU)")
    dataset = load_dataset(args.eval_dataset, args.eval_root) if args.eval_dataset else None
    methods = ("minmax", "entropy", "percentile") if args.method == "all" else (args.method,)
    placement = {"exclude_nodes": tuple(args.exclude), "quantize_concat_inputs": args.quantize_concat_inputs,
                 "quantize_output_layers": args.quantize_output_layers,
                 "quantize_token_writers": args.quantize_token_writers}
    run_int8(args.artifact, output_folder(args), target=args.target, methods=methods, source=args.source,
             count=args.count, eval_dataset=dataset, compare_attention=not args.no_attention_comparison,
             threads=args.threads, placement=placement, cpu_isa=args.cpu_isa or "")


def _detector(args) -> None:
    from hybreid.calibration.detector_int8 import quantize_detector

    result = quantize_detector(args.detector, output_file(args.out, args.overwrite), args.video, args.count,
                               args.cpu_isa or "")
    print(f"saved {result.path}: its convolutions in INT8 for {result.cpu_isa}, calibrated on {result.frames} frames "
          f"(site file: detector: {{kind: nanodet, path: {result.path}}})")


def _threshold(args) -> None:
    from hybreid.calibration.threshold import calibrate_on_dataset, format_thresholds
    from hybreid.data.datasets import load_dataset
    from hybreid.inference import load_embedder

    if args.tracklet_crops < 1:
        raise UserError(f"--tracklet-crops {args.tracklet_crops}: a tracklet holds at least one crop")
    result = calibrate_on_dataset(load_embedder(args.artifact), load_dataset(args.dataset, args.root), args.split,
                                  args.fmr, output_file(args.out, args.overwrite), args.tracklet_crops)
    print(format_thresholds(result["thresholds"], args.fmr))
    print(f"saved {result['path']} (read by the matcher) and {result['plot']}")


def register(commands) -> None:
    calibrate = group(commands, "calibrate", "calibration: int8, threshold")
    int8 = command(calibrate, "int8", "Q/DQ INT8 model and a report of what INT8 costs", _int8)
    int8.add_argument("--artifact", required=True, help="FP32 ONNX from `hybreid export onnx`")
    int8.add_argument("--target", choices=list(TARGETS), default="tensorrt",
                      help="tensorrt: symmetric S8S8 Q/DQ; cpu: the Q/DQ form ONNX Runtime's CPU kernels run best "
                           "on the CPU's instruction set; openvino: symmetric S8S8 with the attention quantised, "
                           "for OpenVINO's runtime (x86-64, Intel or AMD)")
    int8.add_argument("--cpu-isa", choices=list(CPU_ISAS),
                      help="with --target cpu or openvino: the camera boxes' instruction set (default: this CPU's)")
    int8.add_argument("--method", choices=["minmax", "entropy", "percentile", "all"], default="all",
                      help="how activation ranges are chosen")
    int8.add_argument("--source", default="synthetic", help="calibration crops: synthetic, folder:PATH or "
                                                            "dataset:NAME:ROOT")
    int8.add_argument("--count", type=int, default=256, help="calibration crops")
    int8.add_argument("--eval-dataset", choices=sorted(READERS), help="dataset to measure mAP / Rank-1 on "
                                                                      "(FP32 vs INT8)")
    int8.add_argument("--eval-root", help="its folder")
    int8.add_argument("--no-attention-comparison", action="store_true",
                      help="skip the comparison run that also quantises the attention MatMuls")
    int8.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    add_output(int8, "calibrate-int8", "the INT8 models and the report")
    int8.add_argument("--exclude", action="append", default=[], metavar="NODE",
                      help="keep this node in float (repeatable)")
    int8.add_argument("--quantize-concat-inputs", action="store_true",
                      help="quantise layers that read a concatenation as they are, one scale for all parts "
                           "(by default they are split into one op per part)")
    int8.add_argument("--quantize-output-layers", action="store_true",
                      help="also quantise the layers that write the embedding (kept float by default)")
    int8.add_argument("--quantize-token-writers", action="store_true",
                      help="cpu and openvino targets: also quantise patch embeddings whose tokens are concatenated "
                           "with a float class token (kept float by default: OpenVINO computes some such "
                           "concatenations wrongly; check the report's cosine)")

    detector = command(calibrate, "detector", "Q/DQ INT8 NanoDet-g calibrated on a camera's footage", _detector)
    detector.add_argument("--detector", required=True, help="the FP32 NanoDet-g `hybreid detector fetch` wrote")
    detector.add_argument("--video", required=True, help="footage of the camera (or one like it) to calibrate on")
    detector.add_argument("--count", type=int, default=64, help="calibration frames, spread over the video")
    detector.add_argument("--cpu-isa", choices=list(CPU_ISAS), help="the camera box's instruction set "
                                                                     "(default: this CPU's)")
    detector.add_argument("--out", default="nanodet-g.int8.onnx", help="the INT8 detector")
    detector.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    threshold = command(calibrate, "threshold", "match thresholds for a target false-match rate", _threshold)
    threshold.add_argument("--artifact", required=True, help=ARTIFACT_HELP)
    threshold.add_argument("--dataset", required=True, choices=sorted(READERS), help="the dataset's layout")
    threshold.add_argument("--root", required=True, help="its folder")
    threshold.add_argument("--split", choices=["train", "query", "gallery", "test"], default="test",
                           help="the images to score pairs on")
    threshold.add_argument("--fmr", type=float, default=0.01, help="target false-match rate")
    threshold.add_argument("--tracklet-crops", type=int, default=1, metavar="K",
                           help="score tracklets, each the mean of K crops of one person on one camera, as the "
                                "matcher compares them (default: single crops)")
    threshold.add_argument("--out", default="thresholds.json", help="JSON file the matcher reads (and a PNG beside it)")
    threshold.add_argument("--overwrite", action="store_true", help="replace an existing --out")
