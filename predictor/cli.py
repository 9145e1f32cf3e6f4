"""``sluice predictor train|evaluate|retrain``.

Training and evaluation modules load scikit-learn; they are imported when a command runs, so
that other ``sluice`` commands start quickly."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from predictor import artifact
from predictor.data import load_samples, split

REPORTS = Path(__file__).resolve().parent / "reports"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("predictor", help="train and evaluate the output-length model")
    sub = parser.add_subparsers(dest="predictor_command", required=True)
    train = sub.add_parser("train", help="train on the non-held-out conversations of a file")
    train.add_argument("--data", type=Path, required=True, help="ShareGPT-lengths JSONL(.gz)")
    train.add_argument("--out", type=Path, default=artifact.PACKAGED, help="manifest path")
    train.add_argument("--version", default="1")
    again = sub.add_parser(
        "retrain", help="train on recent traffic plus base data; keep it only if it is better"
    )
    again.add_argument(
        "--samples",
        type=Path,
        required=True,
        help="recent traffic, oldest first (GET /admin/predictor/samples)",
    )
    again.add_argument("--data", type=Path, help="base data blended in")
    again.add_argument("--model", type=Path, default=artifact.PACKAGED)
    again.add_argument("--out", type=Path, required=True, help="manifest for the new model")
    again.add_argument("--version", default="retrained")
    evaluate_cmd = sub.add_parser("evaluate", help="score a model on held-out conversations")
    evaluate_cmd.add_argument("--data", type=Path, required=True)
    evaluate_cmd.add_argument("--model", type=Path, default=artifact.PACKAGED)
    evaluate_cmd.add_argument(
        "--all", action="store_true", help="score every row, not only held-out conversations"
    )
    evaluate_cmd.add_argument("--json", action="store_true", help="one JSON object")
    evaluate_cmd.add_argument("--report", type=Path, help="also write JSON and Markdown here")


def run(args: argparse.Namespace) -> int:
    from predictor.evaluate import evaluate
    from predictor.train import fit

    if args.predictor_command == "retrain":
        return _retrain(args)
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


def _retrain(args: argparse.Namespace) -> int:
    from predictor.online import retrain

    try:
        recent = load_samples(args.samples)
        base = load_samples(args.data) if args.data else []
        current = artifact.load(args.model)
    except (OSError, ValueError, artifact.ArtifactError) as exc:
        print(f"sluice predictor: {exc}", file=sys.stderr)
        return 2
    outcome = retrain(current.model, base, recent)
    print(json.dumps(outcome.report()))
    if outcome.model is None:
        return 1
    artifact.save(
        outcome.model,
        args.out,
        version=args.version,
        training={
            "samples": outcome.trained_on,
            "retrain": outcome.report(),
            "baselines": current.manifest["training"]["baselines"],
        },
    )
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


TAU_TARGET = 0.55  # Kendall tau on held-out conversations
PREDICT_P99_TARGET_US = 1000.0  # one request's prediction, p99

DESCRIPTION = (
    "The model: word uni- and bigrams hashed into 2^18 buckets (head and tail of long prompts), "
    "sublinear tf-idf, a ridge regression with structure and lexical-cue features (history "
    "tokens, turn, the assistant's earlier replies in the conversation: how many, the last "
    "one's length and their mean; system prompt, code, questions, task words), its out-of-fold "
    "score stacked with those dense features into gradient-boosted trees (depth at most 7), and "
    "residual quantiles from a held-back fold (p10/p50/p90/p95) for conservative use. Both "
    "stages predict the normal score of the reply's rank among the training replies (mapped "
    "back to tokens by the training quantiles). The artifact: arrays in an npz loaded without "
    "pickle, a JSON manifest with the feature schema, training metadata and SHA-256."
)


def targets(result: dict[str, object]) -> str:
    """The targets against this evaluation's numbers, every verdict computed from them."""
    tau = float(str(result["kendall_tau"]))
    p99 = float(str(result["predict_p99_us"]))
    p50 = float(str(result["predict_p50_us"]))
    baselines = result["baselines"]
    assert isinstance(baselines, dict)
    best = max(float(row["kendall_tau"]) for row in baselines.values()) if baselines else None

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    lines = [
        "# Output-length predictor: evaluation",
        "",
        "## Targets against results",
        "",
        "| target | result | |",
        "|---|---|---|",
        f"| Kendall τ ≥ {TAU_TARGET} on held-out conversations | {tau:.3f} | "
        f"{verdict(tau >= TAU_TARGET)} |",
        f"| p99 single-request prediction ≤ {PREDICT_P99_TARGET_US / 1000:g} ms | {p99:.0f} µs, "
        f"p50 {p50:.0f} | {verdict(p99 <= PREDICT_P99_TARGET_US)} |",
        "",
        DESCRIPTION,
    ]
    if best is not None:
        lines += ["", f"The best baseline below reaches τ {best:.3f}; the model {tau:.3f}."]
    return "\n".join([*lines, "", "## Results", "", ""])


def write_report(result: dict[str, object], path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    (path / "evaluation.md").write_text(targets(result) + markdown(result) + "\n")
