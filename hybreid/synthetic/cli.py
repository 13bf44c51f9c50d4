"""``hybreid data synth`` and ``hybreid edge scenes``: synthetic people, datasets and videos."""

from __future__ import annotations

from hybreid.command_line import command, group

# hybreid.synthetic.people's band names, spelled here so building the parser stays free of OpenCV.
INFRARED_BANDS = ("near_infrared", "thermal")


def _synth(args) -> None:
    from hybreid.data.datasets import load_dataset
    from hybreid.synthetic import datasets
    from hybreid.tables import format_table

    settings = {"train_ids": args.train_ids, "test_ids": args.test_ids, "images_per_camera": args.images_per_camera,
                "seed": args.seed}
    if args.layout == "sysu_mm01":
        root = datasets.write_sysu_mm01(args.out, infrared_band=args.infrared_band, **settings)
    else:
        root = datasets.write_market1501(args.out, **settings)
    dataset = load_dataset(args.layout, root)
    print(format_table(["split", "identities", "images", "cameras"], dataset.summary(),
                       title=f"synthetic {args.layout} written to {root}"))


def _scenes(args) -> None:
    if args.site:
        from hybreid.synthetic.site import SiteSpec, default_spec, render_site

        spec = default_spec() if args.site == "default" else SiteSpec.load(args.site)
        truth = render_site(args.out, spec)
        for camera in truth["cameras"]:
            print(f"{args.out}/{camera['video']}: {camera['modality']}, {truth['frames']} frames, "
                  f"{len(camera['passages'])} passages, ground truth {args.out}/gt/{camera['id']}.txt")
        print(f"ground truth and camera graph: {args.out}/ground_truth.json")
        return
    from hybreid.synthetic.scenes import render_scenes

    truth = render_scenes(args.out, tuple(args.modality or ["visible", "infrared"]), args.people, args.fps,
                          seed=args.seed, infrared_band=args.infrared_band)
    for camera in truth["cameras"]:
        print(f"{args.out}/{camera['video']}: {camera['modality']}, {truth['frames']} frames, "
              f"{len(camera['passages'])} passages")
    print(f"ground truth: {args.out}/ground_truth.json")


def register(commands) -> None:
    synth = command(group(commands, "data", "datasets: write synthetic people"), "synth",
                    "synthetic people in a real dataset layout", _synth)
    synth.add_argument("--layout", choices=["market1501", "sysu_mm01"], required=True, help="the dataset to imitate")
    synth.add_argument("--out", required=True, help="dataset root to create")
    synth.add_argument("--train-ids", type=int, default=200, help="training identities")
    synth.add_argument("--test-ids", type=int, default=100, help="held-out test identities")
    synth.add_argument("--images-per-camera", type=int, default=4, help="images of each identity per camera")
    synth.add_argument("--seed", type=int, default=0, help="random seed")
    synth.add_argument("--infrared-band", choices=INFRARED_BANDS, default=INFRARED_BANDS[0],
                       help="sysu_mm01: what the infrared cameras see (the real dataset's are near infrared)")

    scenes = command(group(commands, "edge", "edge runtime: run, scenes"), "scenes",
                     "synthetic camera videos with ground truth", _scenes)
    scenes.add_argument("--out", required=True, help="folder for the videos and the ground truth")
    scenes.add_argument("--modality", action="append", choices=["visible", "infrared"],
                        help="one per camera (repeatable); default: visible and infrared")
    scenes.add_argument("--people", type=int, default=6, help="people walking through every camera")
    scenes.add_argument("--fps", type=int, default=10, help="frames per second")
    scenes.add_argument("--seed", type=int, default=0, help="random seed")
    scenes.add_argument("--infrared-band", choices=INFRARED_BANDS, default=INFRARED_BANDS[0],
                        help="what the infrared cameras see")
    scenes.add_argument("--site", metavar="SPEC.yaml|default",
                        help="a whole site instead: cameras, camera graph, people coming and going (see "
                             "configs/site_scenes.yaml); the options above do not apply")
