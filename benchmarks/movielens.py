"""Section 5 of the suite: the MovieLens-100K MMoE run of configs/movielens-100k.yaml (``make movielens``)
as a user runs it, its samples/s as the trainer reports it and its u1.test quality, one of its steps
profiled, and the plain command (the CLI defaults) in the same sitting."""

import time
from typing import Any, Dict

from benchmarks.common import OtherLoad
from benchmarks.suite import ML_CONFIG, TARGETS, Suite
from torchrec_fusion.training.config import FAMILIES, TrainConfig, read_config_file
from torchrec_fusion.training.state import RunResult

# the run's own settings that the printed summary leaves out (where and how it ran, not what)
_NOT_SHOWN = ("data_dir", "progress", "verbose", "report", "save_model", "output_dir", "device")


def changed_settings(config: TrainConfig) -> Dict[str, Any]:
    """The settings of ``config`` other than the CLI defaults, flat: a component's options (its
    config section holds only those given) by their own names."""
    defaults = TrainConfig().to_dict()
    sections = {f.section for f in FAMILIES}
    out: Dict[str, Any] = {}
    for k, v in config.to_dict().items():
        if k in sections:
            out.update(v)
        elif v != defaults[k]:
            out[k] = v
    return out


def _targets(suite: Suite, res: RunResult, ml_ws: int, others: float) -> None:
    rate, goal = res.samples_per_second, TARGETS["movielens_samples_per_s"]
    suite.targets.append({"target": f"ML-100K MMoE run of configs/movielens-100k.yaml ({ml_ws} ranks), trainer's "
                                    "samples/s", "goal": f">= {goal:,.0f}", "measured": rate, "met": rate >= goal,
                          "by": rate / goal, "other_cpu_cores": others})
    rmse, auc = res.tasks["rating"]["rmse"], res.tasks["like"]["auc"]
    suite.targets.append({"target": "ML-100K quality of that run on u1.test (walking skeleton's bar: RMSE < 0.93, "
                                    "like AUC > 0.79)", "goal": "RMSE < 0.93 and AUC > 0.79", "measured": None,
                          "shown": f"RMSE {rmse:.4f}, AUC {auc:.4f}", "met": rmse < 0.93 and auc > 0.79,
                          "by": None, "other_cpu_cores": 0.0})


def _cli_defaults(suite: Suite, common: Dict[str, Any], ml_ws: int, config_rate: float) -> Dict[str, Any]:
    """The plain command a new user types (the CLI's defaults, the same epochs as the config's run), in
    the same sitting as the config's run: issue #15's bar is >= 90% of the config's samples/s."""
    from torchrec_fusion.training.trainer import train

    dcfg = TrainConfig.from_dict({"dataset": "movielens", **common})
    t = time.perf_counter()
    load = OtherLoad()
    dres = train(dcfg)
    others = load.cores()
    extra = "".join(f" --{k.replace('_', '-')} {common[k]}" for k in ("epochs", "max_steps") if common.get(k))
    ratio = dres.samples_per_second / config_rate
    suite.targets.append({"target": "ML-100K plain command (CLI defaults) against the config, trainer's samples/s, "
                                    "same sitting", "goal": ">= 0.90", "measured": ratio, "met": ratio >= 0.9,
                          "by": ratio / 0.9, "other_cpu_cores": others})
    return {"command": f"torchrec-fusion train --dataset movielens --data-dir {suite.ml_dir} --world-size {ml_ws}"
                       + extra,
            "samples_per_second": dres.samples_per_second, "steps": dres.steps, "epochs": dcfg.epochs,
            "batch_size_per_rank": dcfg.batch_size, "precision": dcfg.precision,
            "wall_seconds": time.perf_counter() - t, "tasks": dres.tasks, "of_config": ratio,
            "other_cpu_cores": others}


def run_movielens(suite: Suite) -> None:
    """The project's MovieLens settings, as a user runs them (every epoch of the file; ``--quick``: a few
    steps), then one of its steps profiled (the trainer's data, plan and pipeline, batches built ahead)."""
    import torch

    from benchmarks.mlprofile import profile_demo_step
    from torchrec_fusion.distributed.launcher import launch
    from torchrec_fusion.training.trainer import train

    if not suite.ml_ok:
        suite.result["movielens"] = {"skipped": f"no MovieLens-100K files in {suite.ml_dir}"}
        return
    plan, device = suite.plan, suite.device
    ml_ws = 2 if device == "cpu" or torch.cuda.device_count() >= 2 else 1
    quick = {"epochs": plan.ml_epochs, "max_steps": plan.ml_max_steps} if suite.args.quick else {}
    common = {"data_dir": suite.ml_dir, "world_size": ml_ws, "progress": False, "verbose": False,
              "report": False, "save_model": False, "device": device, "output_dir": None, **quick}
    cfg = TrainConfig.from_dict({**read_config_file(str(ML_CONFIG)), **common}, str(ML_CONFIG))
    t = time.perf_counter()
    load = OtherLoad()
    res = train(cfg)
    others = load.cores()
    suite.ml_rate = res.samples_per_second
    suite.result["movielens"] = {
        "command": "torchrec-fusion train --config configs/movielens-100k.yaml"
                   + (f" --world-size {ml_ws}" if ml_ws != cfg.world_size else "")
                   + "".join(f" --{k.replace('_', '-')} {v}" for k, v in quick.items() if v is not None),
        "config": changed_settings(cfg),
        "samples_per_second": res.samples_per_second, "train_seconds": res.train_seconds, "steps": res.steps,
        "batch_size_per_rank": cfg.batch_size, "world_size": ml_ws, "epochs": cfg.epochs,
        "wall_seconds": time.perf_counter() - t, "tasks": res.tasks, "other_cpu_cores": others,
        "target_samples_per_second": TARGETS["movielens_samples_per_s"]}
    _targets(suite, res, ml_ws, others)
    warm, steps, prof = (2, 3, 1) if suite.args.quick else (10, 40, 3)
    suite.result["movielens"]["step_profile"] = launch(profile_demo_step, ml_ws, cfg, warm, steps, prof)
    suite.result["movielens"]["cli_defaults"] = _cli_defaults(suite, common, ml_ws, res.samples_per_second)


def report_movielens(suite: Suite) -> None:
    say = suite.say
    say("\n== 5. MovieLens-100K MMoE run of the project's settings (configs/movielens-100k.yaml, make movielens); "
        "the trainer's samples/s counts the training loop, not evaluation ==")
    m = suite.result["movielens"]
    if "skipped" in m:
        say(f"skipped: {m['skipped']}")
        return
    tasks = m["tasks"]
    goal = TARGETS["movielens_samples_per_s"]
    say(f"{m['command']}: {m['world_size']} ranks x batch {m['batch_size_per_rank']}, {m['epochs']} epochs, "
        f"{m['steps']} steps, samples/s {m['samples_per_second']:,.0f} as the trainer reports it (target "
        f"{goal:,.0f}: {m['samples_per_second'] / goal:.1%} of it); u1.test like AUC "
        f"{tasks['like']['auc']:.4f}, rating RMSE {tasks['rating']['rmse']:.4f}; wall {m['wall_seconds']:.0f} s")
    say("  settings other than the CLI defaults: " + ", ".join(
        f"{k}={v}" for k, v in m["config"].items() if k not in _NOT_SHOWN))
    prof = m["step_profile"][0]
    p = prof["profile"]
    say(f"its step without the loader (batches built ahead), rank 0: median {prof['median_ms_per_step']:.1f} "
        f"ms = {prof['samples_per_s_median_step']:,.0f} samples/s; profiled ({p['steps']} steps, ms per step): "
        + ", ".join(f"{k} {v:.1f}" for k, v in p["ms_per_step"].items())
        + f"; total {p['wall_ms_per_step']:.1f}")
    say("  top ops by self CPU time (ms per step): " + ", ".join(
        f"{k} {v:.1f}" for k, v in p["top_self_cpu_ms_per_step"][:8]))
    f = m.get("cli_defaults")
    if f:
        say(f"the plain command (the CLI's defaults): {f['command']} (batch {f['batch_size_per_rank']} per rank, "
            f"{f['epochs']} epochs): {f['steps']} steps, samples/s {f['samples_per_second']:,.0f} = "
            f"{f['of_config']:.0%} of the config's; u1.test like AUC {f['tasks']['like']['auc']:.4f}, "
            f"rating RMSE {f['tasks']['rating']['rmse']:.4f}")
