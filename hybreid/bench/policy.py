"""The matcher's thresholds chosen on recorded sites, and checked on others.

``hybreid calibrate threshold`` sets each threshold at a false-match rate between single
crops. The matcher compares tracklets, each the mean of many crops, and a mean of crops
of two different people is closer than two single crops are: on the synthetic site a
third to a half of the same-modality tracklet pairs above the crop threshold are two
people. Which threshold suits tracklets depends on the site (how long people stay in
view, how alike they dress), so it is chosen here on recordings of sites (``bench site
--record``), by replaying each through a fresh matcher for every candidate
(:func:`hybreid.bench.recording.replay`): the candidate with the best mean of online
and re-associated IDF1 on the *tuning* renderings wins, and is then scored on the
*held-out* ones, which had no say. A table of the best candidates, the held-out rows
beside the recorded policy's, a heat map of the tuning score, JSON, and a thresholds
file that ``matcher run --thresholds`` and ``bench site --thresholds`` take (the transit
bonus, when it is a knob too, is ``matcher run --transit-bonus``).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hybreid.bench.recording import Recording, load, replay
from hybreid.errors import UserError
from hybreid.matcher.policy import MatchPolicy
from hybreid.tables import format_table
from hybreid.thresholds import ThresholdEntry, ThresholdsFile

COLUMNS = ("IDF1 online", "IDF1 re-associated", "IDF1 ceiling", "vis-IR link P", "vis-IR link R",
           "re-associated - online")
KNOBS = ("same_modality", "cross_modality", "transit_bonus")


def figures(scores: dict[str, dict]) -> dict[str, float]:
    online, reassociated = scores["online"]["mtmc"]["idf1"], scores["re-associated"]["mtmc"]["idf1"]
    links = scores["re-associated"]["cross_modality"]
    return dict(zip(COLUMNS, (online, reassociated, scores["true identities"]["mtmc"]["idf1"], links["precision"],
                              links["recall"], reassociated - online), strict=True))


def objective(rows: list[dict[str, float]]) -> float:
    """What a candidate is chosen by: the mean over renderings of online and re-associated
    IDF1 alike (live events carry the online identities, later queries the re-associated)."""
    return float(np.mean([(row["IDF1 online"] + row["IDF1 re-associated"]) / 2 for row in rows]))


def grid(values: list[float] | None, around: float, below: int, above: int) -> list[float]:
    """The candidates of one threshold: the values given, or steps of 0.02 from ``below`` steps
    under the recorded threshold to ``above`` steps over it (tracklet means call for higher
    thresholds than crops)."""
    if values:
        return sorted(set(values))
    return sorted({round(around + 0.02 * step, 3) for step in range(-below, above + 1)
                   if 0.0 <= around + 0.02 * step <= 1.0})


def run(folders: list[str | Path], out: str | Path, tune_seeds: list[int], same: list[float] | None = None,
        cross: list[float] | None = None, transit_bonus: list[float] | None = None) -> dict:
    recordings = [load(folder) for folder in folders]
    by_seed: dict[int, Recording] = {}
    for item in recordings:
        if item.info.seed in by_seed:
            raise UserError(f"recordings {by_seed[item.info.seed].folder} and {item.folder} are both seed "
                            f"{item.info.seed}; give one recording a rendering")
        by_seed[item.info.seed] = item
    models = {item.info.model for item in recordings}
    if len(models) > 1:
        raise UserError(f"the recordings come from {len(models)} models ({', '.join(sorted(models))}); thresholds "
                        "belong to one model")
    missing = sorted(set(tune_seeds) - set(by_seed))
    if missing:
        raise UserError(f"no recording of tuning seed(s) {missing}; the recordings are of seeds {sorted(by_seed)}")
    held_out = sorted(set(by_seed) - set(tune_seeds))
    first = recordings[0].info
    base = MatchPolicy.checked(same_modality=first.same_modality, cross_modality=first.cross_modality,
                               transit_bonus=first.transit_bonus)
    # Each candidate through the policy's own checks: a NaN or negative value is one sentence.
    candidates = [MatchPolicy.checked(**{**base.model_dump(), **dict(zip(KNOBS, values, strict=True))})
                  for values in itertools.product(grid(same, base.same_modality, 1, 4),
                                                  grid(cross, base.cross_modality, 1, 2),
                                                  sorted(set(transit_bonus or [base.transit_bonus])))]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    tried = []
    for policy in tqdm(candidates, desc="candidate policies", unit="candidate"):
        rows = [figures(replay(by_seed[seed], policy)) for seed in tune_seeds]
        tried.append({**{knob: getattr(policy, knob) for knob in KNOBS}, "score": objective(rows),
                      "rows": dict(zip(tune_seeds, rows, strict=True))})
    best = max(tried, key=lambda entry: entry["score"])
    chosen = MatchPolicy.checked(**{**base.model_dump(), **{knob: best[knob] for knob in KNOBS}})
    ranked = sorted(tried, key=lambda entry: -entry["score"])
    print(format_table(["same-modality", "cross-modality", "transit bonus", "score", "online (mean)",
                        "re-associated (mean)", "re-associated, worst"],
                       [[*(entry[knob] for knob in KNOBS), entry["score"],
                         np.mean([row["IDF1 online"] for row in entry["rows"].values()]),
                         np.mean([row["IDF1 re-associated"] for row in entry["rows"].values()]),
                         min(row["IDF1 re-associated"] for row in entry["rows"].values())]
                        for entry in ranked[:10]],
                       floatfmt=".3f", title=f"the best of {len(tried)} candidates on tuning seed(s) {tune_seeds}: "
                                             "score = mean of online and re-associated IDF1"))

    # The chosen policy's tuning rows were replayed in the sweep; only the held-out ones are new.
    checked = {"recorded": {seed: figures(replay(by_seed[seed], base)) for seed in sorted(by_seed)},
               "chosen": {seed: best["rows"][seed] if seed in best["rows"] else figures(replay(by_seed[seed], chosen))
                          for seed in sorted(by_seed)}}
    table = []
    for seed in sorted(by_seed):
        role = "tuning" if seed in tune_seeds else "held out"
        for name in ("recorded", "chosen"):
            table.append([f"seed {seed} ({role})", name, *checked[name][seed].values()])
    for subset, seeds in (("tuning", sorted(tune_seeds)), ("held out", held_out)):
        for name in ("recorded", "chosen") if seeds else ():
            values = np.array([list(checked[name][seed].values()) for seed in seeds])
            table.append([f"mean, {subset}", name, *values.mean(axis=0)])

    def described(policy: MatchPolicy) -> str:
        return (f"{policy.same_modality:.3f} / {policy.cross_modality:.3f}, transit bonus "
                f"{policy.transit_bonus:.3f}")

    print(format_table(["rendering", "policy", *COLUMNS], table, floatfmt=".3f",
                       title=f"recorded {described(base)} against chosen {described(chosen)}"))

    thresholds = ThresholdsFile(model=first.model, same_modality=ThresholdEntry(
        threshold=chosen.same_modality, chosen_on_seeds=sorted(tune_seeds), recorded=base.same_modality),
        cross_modality=ThresholdEntry(threshold=chosen.cross_modality, chosen_on_seeds=sorted(tune_seeds),
                                      recorded=base.cross_modality))
    thresholds_file = thresholds.save(out / "thresholds.json")
    plot = _heat_map([entry for entry in tried if entry["transit_bonus"] == chosen.transit_bonus],
                     out / "policy.png", tune_seeds, chosen.transit_bonus)
    result = {"model": first.model, "tune_seeds": sorted(tune_seeds), "held_out_seeds": held_out,
              "recordings": [str(item.folder) for item in recordings],
              "recorded": {knob: getattr(base, knob) for knob in KNOBS},
              "chosen": {knob: getattr(chosen, knob) for knob in KNOBS},
              "candidates": [{**entry, "rows": {str(k): v for k, v in entry["rows"].items()}} for entry in tried],
              "checked": {name: {str(seed): row for seed, row in rows.items()} for name, rows in checked.items()}}
    (out / "policy.json").write_text(json.dumps(result, indent=2))
    # The thresholds file holds thresholds only; the bonus is a flag of the matcher.
    print(f"saved {out / 'policy.json'}, {thresholds_file} and {plot}; run the matcher with --thresholds "
          f"{thresholds_file} --transit-bonus {chosen.transit_bonus:g}")
    return result


def _heat_map(tried: list[dict], path: Path, tune_seeds: list[int], transit_bonus: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    same = sorted({entry["same_modality"] for entry in tried})
    cross = sorted({entry["cross_modality"] for entry in tried})
    score = np.full((len(same), len(cross)), np.nan)
    for entry in tried:
        score[same.index(entry["same_modality"]), cross.index(entry["cross_modality"])] = entry["score"]
    fig, axis = plt.subplots(figsize=(1.2 + 0.9 * len(cross), 1.2 + 0.45 * len(same)))
    image = axis.imshow(score, cmap="viridis", aspect="auto")
    middle = (np.nanmin(score) + np.nanmax(score)) / 2
    for (i, j), value in np.ndenumerate(score):  # dark text on viridis' light upper half
        axis.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7,
                  color="black" if value > middle else "white")
    axis.set(xticks=range(len(cross)), xticklabels=[f"{v:.3f}" for v in cross], yticks=range(len(same)),
             yticklabels=[f"{v:.3f}" for v in same], xlabel="cross-modality threshold",
             ylabel="same-modality threshold",
             title=f"mean of online and re-associated IDF1, seeds {', '.join(map(str, tune_seeds))}\n"
                   f"(transit bonus {transit_bonus:g})")
    fig.colorbar(image, ax=axis)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
