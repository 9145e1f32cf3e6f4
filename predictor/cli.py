"""``sluice predictor train|evaluate``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from predictor import artifact
from predictor.data import load_samples, split
from predictor.evaluate import evaluate
from predictor.train import fit

REPORTS = Path(__file__).resolve().parent / "reports"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("predictor", help="train and evaluate the output-length model")
    sub = parser.add_subparsers(dest="predictor_command", required=True)
    train = sub.add_parser("train", help="train on the non-held-out conversations of a file")
    train.add_argument("--data", type=Path, required=True, help="ShareGPT-lengths JSONL(.gz)")
    train.add_argument("--out", type=Path, default=artifact.PACKAGED, help="manifest path")
    train.add_argument("--version", default="1")
    evaluate_cmd = sub.add_parser("evaluate", help="score a model on held-out conversations")
    evaluate_cmd.add_argument("--data", type=Path, required=True)
    evaluate_cmd.add_argument("--model", type=Path, default=artifact.PACKAGED)
    evaluate_cmd.add_argument(
        "--all", action="store_true", help="score every row, not only held-out conversations"
    )
    evaluate_cmd.add_argument("--json", action="store_true", help="one JSON object")
    evaluate_cmd.add_argument("--report", type=Path, help="also write JSON and Markdown here")


def run(args: argparse.Namespace) -> int:
    try:
        samples = load_samples(args.data)
    except (OSError, ValueError) as exc:
        print(f"sluice predictor: {exc}", file=sys.stderr)
        return 2
    train_part, test_part = split(samples)
    if args.predictor_command == "train":
        if not train_part:
            print("sluice predictor: no training rows", file=sys.stderr)
            return 2
        model, _, metadata = fit(train_part)
        metadata["data"] = args.data.name
        artifact.save(model, args.out, version=args.version, training=metadata)
        print(f"wrote {args.out} ({metadata['samples']} samples, {metadata['train_seconds']} s)")
        return 0
    try:
        loaded = artifact.load(args.model)
    except artifact.ArtifactError as exc:
        print(f"sluice predictor: {exc}", file=sys.stderr)
        return 2
    scored = samples if args.all else test_part
    if not scored:
        print("sluice predictor: nothing to evaluate", file=sys.stderr)
        return 2
    result = evaluate(loaded.model, loaded.manifest["training"]["baselines"], scored)
    result["model_version"] = loaded.version
    result["data"] = args.data.name
    result["split"] = "all rows" if args.all else "held-out conversations (crc32 mod 5 == 0)"
    if args.report:
        write_report(result, args.report)
    if args.json:
        print(json.dumps(result))
    else:
        print(markdown(result))
    return 0


def markdown(result: dict[str, object]) -> str:
    rows = [("model", result)]
    baselines = result["baselines"]
    assert isinstance(baselines, dict)
    rows += [(f"baseline: {name}", value) for name, value in baselines.items()]
    lines = [
        f"Output-length predictor v{result['model_version']} on {result['data']}, "
        f"{result['split']}: n = {result['n']}",
        "",
        "| predictor | Kendall τ | MAE | RMSE | within 1 bucket | within 50 | within 100 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows:
        assert isinstance(row, dict)
        lines.append(
            f"| {name} | {row['kendall_tau']:.3f} | {row['mae']:.1f} | {row['rmse']:.1f} | "
            f"{row['within_1_bucket']:.3f} | {row['within_50']:.3f} | {row['within_100']:.3f} |"
        )
    lines += [
        "",
        f"Single-request prediction: p50 {result['predict_p50_us']:.0f} µs, "
        f"p99 {result['predict_p99_us']:.0f} µs (one core, one request at a time). "
        f"The p90 quantile covers {100 * float(str(result['p90_coverage'])):.1f}% of replies.",
    ]
    return "\n".join(lines)


def write_report(result: dict[str, object], path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    (path / "evaluation.md").write_text(
        "# Output-length predictor: evaluation\n\n" + markdown(result) + "\n"
    )
