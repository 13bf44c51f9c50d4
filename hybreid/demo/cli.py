"""``hybreid demo``."""

from __future__ import annotations

from pathlib import Path

from hybreid.command_line import command, require


def _demo(args) -> None:
    require("torch", "timm", "onnx", "onnxruntime", "cv2", "faiss", "paho", *(() if args.broker else ("amqtt",)))
    from hybreid.demo.pipeline import DemoConfig, run_demo

    run_demo(DemoConfig(out=Path(args.out), people=args.people, seconds=args.seconds, epochs=args.epochs,
                        train_ids=args.train_ids, test_ids=args.test_ids, edge_precision=args.edge_precision,
                        broker=args.broker, retrain=args.retrain, seed=args.seed))


def register(commands) -> None:
    from hybreid.demo.pipeline import DemoConfig

    defaults = DemoConfig()
    demo = command(commands, "demo", "the whole chain on synthetic data: train, export, INT8, cameras -> MQTT -> "
                                     "matcher", _demo)
    demo.add_argument("--out", default="demo-report", help="report folder (a later run reuses its trained model)")
    demo.add_argument("--people", type=int, default=defaults.people, help="people walking through the site")
    demo.add_argument("--seconds", type=float, default=defaults.seconds, help="seconds of video per camera")
    demo.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs")
    demo.add_argument("--train-ids", type=int, default=defaults.train_ids, help="synthetic training identities")
    demo.add_argument("--test-ids", type=int, default=defaults.test_ids, help="synthetic test identities")
    demo.add_argument("--edge-precision", choices=["auto", "int8", "fp32"], default=defaults.edge_precision,
                      help="the model the cameras run (auto: INT8 where the calibration measured it clearly faster "
                           "than FP32 on this CPU)")
    demo.add_argument("--broker", help="mqtt://host:port of a running broker (default: an embedded one)")
    demo.add_argument("--retrain", action="store_true", help="train again even if a previous model matches")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
