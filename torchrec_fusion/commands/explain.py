"""``torchrec-fusion explain``: why a run scores an item as it does for a user."""

import argparse
from typing import Any, Dict, List, Optional

from torchrec_fusion.commands.base import Command
from torchrec_fusion.outputs import write_json

TOP_FEATURES, TOP_HISTORY = 5, 3


def _item_name(e: Dict[str, Any]) -> str:
    return f"item {e['item']}" + (f" ({e['title']})" if e.get("title") else "")


def describe(e: Dict[str, Any], score: Optional[str] = None, top: int = TOP_FEATURES,
             history: int = TOP_HISTORY, gates: bool = True) -> List[str]:
    """An explanation as lines of text: per score (or only ``score``), its value against the
    baseline's, the ``top`` features by absolute attribution and the ``history`` items that raised it
    most; each task's gate mixture (``gates``); the fusion's per-task contributions.

    Example::

        e = {"item": 7, "title": "Heat (1995)", "gates": {"like": {"expert 0": 0.75, "expert 1": 0.25}},
             "scores": {"like": {"value": 1.5, "baseline": -0.5, "unit": "logit", "steps": 32,
                                 "completeness_gap": 0.0, "features": {"item": 1.25, "user": 0.75},
                                 "history": [{"id": 3, "title": "Up (2009)", "attribution": 0.5}]}}}
        text = "\\n".join(describe(e))
        assert "item=+1.250" in text and "Up (2009) +0.500" in text and "expert 0 0.75" in text
    """
    lines = []
    for name, s in e["scores"].items():
        if score is not None and name != score:
            continue
        feats = ", ".join(f"{f}={v:+.3f}" for f, v in list(s["features"].items())[:top])
        lines.append(f"    {name}: {s['value']:.3f} {s['unit']} (baseline {s['baseline']:.3f}): {feats}")
        raised = [h for h in s.get("history", []) if h["attribution"] > 0][:history]
        if raised:
            lines.append("      because of: " + "; ".join(
                f"{h.get('title', h['id'])} {h['attribution']:+.3f}" for h in raised))
    for task, g in (e.get("gates", {}) if gates else {}).items():
        lines.append(f"    gate {task}: " + ", ".join(f"{x} {w:.2f}" for x, w in g.items()))
    if e.get("fusion"):
        lines.append("    fused score from: " + ", ".join(f"{t} {c:+.3f}" for t, c in e["fusion"].items()))
    return lines


class Explain(Command):
    help = "why a run scores an item for a user: attributions per feature, history item, expert and task"
    description = ("Integrated gradients of every task score and of the fused score over the pooled embeddings and "
                   "the dense features (from the all-zero input), split over the ids of each bag; each task's gate "
                   "mixture over the experts; the fusion's per-task contributions. Computed in this process from the "
                   "run's checkpoint gathered whole (the same at any world size) or from an exported model.")
    outputs = {"--output": "file"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--run", help="the run folder (OUT of train)")
        source.add_argument("--export", help="an exported model's folder (OUT/export of export)")
        parser.add_argument("--checkpoint", help="with --run: a checkpoint folder, 'best' or 'latest' (default)")
        parser.add_argument("--user", type=int, required=True, help="the dataset's user id")
        parser.add_argument("--item", type=int, nargs="+", required=True, help="the dataset's item id(s)")
        parser.add_argument("--data-dir", help="the dataset's folder, when it moved since training")
        parser.add_argument("--allow-plugins", action="store_true",
                            help="import the plugin modules the run's config names (runs their code)")
        parser.add_argument("--output", help="write the explanations here as JSON instead of printing")

    def run(self, args: argparse.Namespace) -> int:
        from torchrec_fusion.explain.run import explain_pairs, load_explainer

        explainer = load_explainer(args.run, args.export, args.checkpoint, args.allow_plugins, args.data_dir)
        explained = explain_pairs(explainer, [args.user] * len(args.item), args.item)
        if args.output:
            write_json(args.output, explained, indent=1)
            print(f"wrote {len(explained)} explanation(s) to {args.output}")
            return 0
        for e in explained:
            print(f"user {e['user']}, {_item_name(e)} (from {explainer.source}):")
            print("\n".join(describe(e)))
        return 0
