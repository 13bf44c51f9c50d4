"""``hybreid train``."""

from __future__ import annotations

from hybreid.command_line import command
from hybreid.errors import UserError


def _train(args) -> None:
    from hybreid.config import parse_overrides
    from hybreid.train.config import resolve_config
    from hybreid.train.trainer import Trainer

    config = resolve_config(args.config, parse_overrides(args.overrides))
    trainer = Trainer(config)
    try:
        history = trainer.fit()
    except KeyboardInterrupt:
        again = " ".join(["hybreid train"] + (["--config", args.config] if args.config else []) + args.overrides)
        raise UserError(f"training stopped; `{again} resume=auto` continues from the last finished epoch "
                        f"({trainer.output / 'last.pt'})") from None
    final = history[-1] if history else {}
    summary = ", ".join(f"{k} {final[k]:.4f}" for k in ("loss", "mAP", "rank1", "mINP") if k in final)
    print(f"finished: {summary}; run folder {config.output}")


def register(commands) -> None:
    train = command(commands, "train", "train a model (single process, or under torchrun)", _train)
    train.add_argument("--config", help="YAML training config (see configs/train/)")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, e.g. dataset.root=/data/market optim.epochs=120")
