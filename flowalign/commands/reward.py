"""``flowalign reward score|eval``: thin CLI over ``reward_models.scoring`` and ``reward_models.evaluate``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flowalign.commands import DEVICE_HELP, resolve_device


def _parse_reward(text: str):
    """``NAME``, ``module:Class`` or a JSON object ``{"name"|"target": ..., "kwargs": {...}}``."""
    if text.strip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"--reward JSON is invalid: {err}") from err
    return text


def _build_rewards(args) -> tuple[dict, dict]:
    """Rewards and their canonical configs, by label (name, plus ``[hash]`` of the kwargs if any)."""
    from reward_models import build_reward
    from reward_models.scoring import reward_label

    rewards, configs = {}, {}
    for spec in args.reward:
        if not isinstance(spec, (str, dict)):
            raise SystemExit(f"error: --reward JSON must be an object, got {json.dumps(spec)}")
        label, config = reward_label(spec)
        if label in rewards:
            raise SystemExit(f"error: reward {label!r} given twice")
        rewards[label] = build_reward(spec).to(resolve_device(args.device)).eval()
        configs[label] = config
        if config["kwargs"]:
            print(f"{label} = {config['reward']} with kwargs {json.dumps(config['kwargs'], sort_keys=True)}")
    return rewards, configs


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reward", action="append", required=True, type=_parse_reward,
                        help="reward name, 'module:Class' or JSON config; repeat for several")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None, help=DEVICE_HELP)
    parser.add_argument("--cache-dir", default=None, help="resumable per-reward score cache")
    parser.add_argument("--skip-bad", action="store_true", help="skip and report bad rows/images instead of failing")
    parser.add_argument("--no-progress", action="store_true")


def run_score(args: argparse.Namespace) -> int:
    from reward_models.io_utils import atomic_write_json, atomic_write_text, rows_to_csv
    from reward_models.scoring import ScoreCache, item_key, list_image_folder, read_score_manifest, score_items

    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".json"):
        raise SystemExit(f"error: --out must end in .csv or .json, got {args.out!r}")
    if args.manifest:
        items, bad = read_score_manifest(args.manifest, prompt=args.prompt, skip_bad=args.skip_bad)
    else:
        items, bad = list_image_folder(args.images, prompt=args.prompt), []
    rewards, configs = _build_rewards(args)
    columns: dict[str, dict] = {}
    for label, reward in rewards.items():
        cache = ScoreCache.for_reward(args.cache_dir, label, configs[label])
        results, bad_items = score_items(reward, items, batch_size=args.batch_size, skip_bad=args.skip_bad,
                                         cache=cache, desc=label, progress=not args.no_progress)
        bad += [b for b in bad_items if b.source not in {x.source for x in bad}]
        columns[label] = results
    bad_sources = {b.source for b in bad}
    rows = []
    for item in items:
        if item.source in bad_sources:
            continue
        key = item_key(item)
        rows.append({"image": str(item.path), "prompt": item.prompt, **{k: v.get(key) for k, v in columns.items()}})
    if out.suffix.lower() == ".csv":
        atomic_write_text(out, rows_to_csv(rows))
    else:
        atomic_write_json(out, {"scores": rows, "skipped": [vars(b) for b in bad]})
    for b in bad:
        print(f"skipped {b.source}: {b.error}", file=sys.stderr)
    print(f"scored {len(rows)} images with {len(rewards)} reward(s) -> {out}"
          + (f"; skipped {len(bad)} bad rows" if bad else ""))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from reward_models.evaluate import evaluate_preferences
    from reward_models.io_utils import atomic_write_json, atomic_write_text
    from reward_models.report import render_html

    out = Path(args.out)
    rewards, configs = _build_rewards(args)
    report = evaluate_preferences(rewards, args.manifest, batch_size=args.batch_size, specs=configs,
                                  cache_dir=args.cache_dir or out / "cache", skip_bad=args.skip_bad,
                                  tie_margin=args.tie_margin, progress=not args.no_progress)
    atomic_write_json(out / "report.json", report.to_dict())
    atomic_write_text(out / "report.html", render_html(report))
    for s in report.skipped:
        print(f"skipped {s['source']}: {s['error']}", file=sys.stderr)
    for name, m in report.rewards.items():
        acc = "n/a" if m.accuracy is None else f"{m.accuracy:.3f}"
        acc_t = "n/a" if m.accuracy_with_ties is None else f"{m.accuracy_with_ties:.3f}"
        print(f"{name}: accuracy {acc} (ties dropped), {acc_t} (ties counted) over {m.n_pairs} pairs")
    print(f"report -> {out / 'report.json'}, {out / 'report.html'}"
          + (f"; skipped {len(report.skipped)} bad rows" if report.skipped else ""))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``reward`` with sub-commands ``score`` and ``eval`` (each sets ``func``)."""
    parser = subparsers.add_parser("reward", help="score images with reward models / evaluate rewards")
    sub = parser.add_subparsers(dest="reward_command", required=True)

    score = sub.add_parser("score", help="score a folder of images or a manifest, write CSV/JSON")
    source = score.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images (prompt from --prompt or <stem>.txt)")
    source.add_argument("--manifest", help=".jsonl/.csv with columns image, prompt")
    score.add_argument("--prompt", default=None, help="prompt for every image")
    score.add_argument("--out", required=True, help="output .csv or .json")
    _common(score)
    score.set_defaults(func=run_score)

    evaluate = sub.add_parser("eval", help="pairwise accuracy on a preference manifest; JSON + HTML report")
    evaluate.add_argument("--manifest", required=True, help=".jsonl/.csv: prompt, image_0, image_1, preferred[, tie]")
    evaluate.add_argument("--out", required=True, help="output folder for report.json / report.html")
    evaluate.add_argument("--tie-margin", type=float, default=0.0, help="|s0 - s1| <= margin predicts a tie")
    _common(evaluate)
    evaluate.set_defaults(func=run_eval)
    return parser
