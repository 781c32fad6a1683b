"""The suite's tables, one function per section: the machine and its ceilings, the comparison of the
contenders, scaling with rows and ranks, the roofline and the targets (the data path's is in
``benchmarks.datapath``, MovieLens's in ``benchmarks.movielens``). Each prints its table through
``suite.say`` and records it in ``suite.result``, the JSON."""

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.common import CONTENDERS, Workload, load_average, machine_info
from benchmarks.suite import TARGETS, Suite, fmt_rows, gib, num


def short_plan_line(line: str) -> str:
    """``  a.b.t_user: table_wise / fused, 1 shard(s) on ranks [0]`` -> ``t_user table_wise on [0]``."""
    line = line.strip()
    try:
        path, rest = line.split(": ", 1)
        kind = rest.split(" / ")[0]
        ranks = rest.rsplit("on ranks ", 1)[1]
        shards = rest.split(", ", 1)[1].split(" shard")[0]
        return f"{path.rsplit('.', 1)[-1]} {kind}" + (f" x{shards}" if shards != "1" else "") + f" on {ranks}"
    except (ValueError, IndexError):
        return line


def machine(suite: Suite) -> None:
    import torch

    info = machine_info()
    info["load_average_start"] = load_average()
    info["device"] = suite.device
    if suite.device == "cuda":
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    suite.result["machine"] = info
    say = suite.say
    say("== machine ==")
    say(f"cpu: {info.get('cpu_model', '?')}, {info['cpus']} cores; memory {gib(info.get('memory_bytes'))} GiB; "
        f"torch {info['torch']}, torchrec {info.get('torchrec', '?')}, {info.get('fbgemm', '?')}; device "
        f"{suite.device}" + (f" ({', '.join(info['gpus'])})" if suite.device == "cuda" else ""))
    la = info["load_average_start"]
    say(f"load average at start: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}"
        + ("  <- above 0.5: something else ran on these cores in the last minute; timings may be noisy"
           if la[0] > 0.5 else ""))
    say("mode: " + ("--quick (tiny sizes, one process per world size: memory figures not isolated)"
                    if suite.args.quick else "default sizes, fresh processes per configuration"))


def ceilings(suite: Suite) -> None:
    """Memory bandwidth and matmul ceiling, measured after the jobs: a rank process spawned from this
    one inherits this process's peak RSS in its ru_maxrss, so this process stays small until then."""
    from benchmarks.roofline import measure_bandwidth, measure_matmul

    plan, device, cores, say = suite.plan, suite.device, suite.cores, suite.say
    bw_all = measure_bandwidth(plan.bandwidth_mib, plan.bandwidth_repeats, threads=cores, device=device)
    bw: Dict[str, Any] = {"all_cores": bw_all}
    mm = {"all_cores": measure_matmul(threads=cores, device=device, repeats=plan.bandwidth_repeats)}
    if device == "cpu" and cores > 1:
        bw["one_thread"] = measure_bandwidth(plan.bandwidth_mib, plan.bandwidth_repeats, threads=1)
        mm["one_thread"] = measure_matmul(threads=1, repeats=plan.bandwidth_repeats)
    suite.bandwidth = bw_all["copy_bytes_per_s"]
    suite.matmul_peak = mm["all_cores"]["flops_per_s"]
    suite.result["bandwidth"] = {**bw, "reference_bytes_per_s": suite.bandwidth}
    suite.result["matmul"] = {**mm, "reference_flops_per_s": suite.matmul_peak}
    say("\n== machine ceilings ==")
    say(f"memory bandwidth ({'GPU memory' if device == 'cuda' else 'host'}, {plan.bandwidth_mib} MiB tensors, best of "
        f"{plan.bandwidth_repeats}): copy {bw_all['copy_bytes_per_s'] / 1e9:.1f} GB/s, add_ "
        f"{bw_all['add_bytes_per_s'] / 1e9:.1f} GB/s with {bw_all['threads'] or 'all'} thread(s)"
        + (f"; one thread: copy {bw['one_thread']['copy_bytes_per_s'] / 1e9:.1f} GB/s, add_ "
           f"{bw['one_thread']['add_bytes_per_s'] / 1e9:.1f} GB/s" if "one_thread" in bw else ""))
    say(f"fp32 matmul [2048 x 1024] @ [1024 x 1024]: {suite.matmul_peak / 1e9:.0f} GFLOP/s with "
        f"{mm['all_cores']['threads'] or 'all'} thread(s)"
        + (f"; one thread {mm['one_thread']['flops_per_s'] / 1e9:.0f} GFLOP/s" if "one_thread" in mm else ""))


# ---- 1. comparison -----------------------------------------------------------------------------------

def _comparison_rows(suite: Suite, comp: Dict[str, Any], w: Workload, ws: int) -> None:
    """The contenders' rows of the throughput table at world size ``ws``."""
    ours = suite.find("ours", w.rows, w.dim, ws)
    for c in CONTENDERS:
        r = suite.find(c, w.rows, w.dim, ws)
        if r is None:
            suite.say(f"{c:<12} {ws:>2}  (not measured)")
            continue
        comp["results"].append(r)
        ratio = ours["train_samples_per_s"] / r["train_samples_per_s"] if ours else None
        suite.say(f"{c:<12} {ws:>2} {r['threads']:>3} {num(r['train_samples_per_s']):>16} "
                  f"{num(r['train_median_samples_per_s']):>14} {r['train_ms_per_step']:>8.1f} "
                  f"{r['train_p90_ms_per_step']:>7.1f} {num(r['eval_samples_per_s']):>15} "
                  f"{r['other_cpu_cores']:>6.2f}  "
                  + (f"{ratio:.2f}x" if ratio and c != "ours" else ""))


def _ratio(a: Dict[str, Any], b: Dict[str, Any], key: str) -> float:
    return float(a[key] / b[key])


def _ratios(suite: Suite, w: Workload, ws: int) -> Dict[str, Any]:
    """The ratios the targets read: ours against the peers and plain PyTorch, fusion against DLRM."""
    def find(c: str) -> Optional[Dict[str, Any]]:
        return suite.find(c, w.rows, w.dim, ws)

    ours, peers, plain = find("ours"), find("peers"), find("plain")
    fus, dlrm, matched = find("ours_fusion"), find("dlrm"), find("ours_matched")
    rat: Dict[str, Any] = {}
    for name, other in (("peers", peers), ("plain", plain)):
        if ours and other:
            rat[f"ours_over_{name}_train"] = _ratio(ours, other, "train_samples_per_s")
            rat[f"ours_over_{name}_eval"] = _ratio(ours, other, "eval_samples_per_s")
            rat[f"ours_over_{name}_train_median"] = _ratio(ours, other, "train_median_samples_per_s")
    if fus and dlrm:
        rat["fusion_step_time_over_dlrm"] = _ratio(fus, dlrm, "train_ms_per_step")
        rat["fusion_step_time_over_dlrm_median"] = _ratio(fus, dlrm, "train_median_ms_per_step")
        rat["fusion_eval_time_over_dlrm"] = _ratio(dlrm, fus, "eval_samples_per_s")
    if fus and ours:
        rat["fusion_step_time_over_ours"] = _ratio(fus, ours, "train_ms_per_step")
    if matched and dlrm:
        rat["matched_step_time_over_dlrm"] = _ratio(matched, dlrm, "train_ms_per_step")
        rat["matched_step_time_over_dlrm_median"] = _ratio(matched, dlrm, "train_median_ms_per_step")
    return rat


def _ratio_line(rat: Dict[str, Any]) -> List[str]:
    parts = []
    for name in ("peers", "plain"):
        if f"ours_over_{name}_train" in rat:
            parts.append(f"ours/{name} {rat[f'ours_over_{name}_train']:.2f}x train (median step "
                         f"{rat[f'ours_over_{name}_train_median']:.2f}x), {rat[f'ours_over_{name}_eval']:.2f}x eval")
    if "fusion_step_time_over_dlrm" in rat:
        parts.append(f"MMoE 4 tasks + fusion step time / DLRM's {rat['fusion_step_time_over_dlrm']:.2f}x "
                     f"(median step {rat['fusion_step_time_over_dlrm_median']:.2f}x; fusion head alone "
                     f"{rat.get('fusion_step_time_over_ours', float('nan')):.2f}x ours)")
    if "matched_step_time_over_dlrm" in rat:
        parts.append(f"the same at DLRM's dense compute (ours_matched) / DLRM's "
                     f"{rat['matched_step_time_over_dlrm']:.2f}x (median step "
                     f"{rat['matched_step_time_over_dlrm_median']:.2f}x)")
    return parts


def _comparison_targets(suite: Suite, rat: Dict[str, Any], w: Workload, ws: int) -> None:
    def find(c: str) -> Optional[Dict[str, Any]]:
        return suite.find(c, w.rows, w.dim, ws)

    goals: Tuple[Tuple[str, str, float, bool, Tuple[str, str]], ...] = (
        ("ours_over_peers_train", "training samples/s, ours / peers' way", TARGETS["ours_over_peers"], True,
         ("ours", "peers")),
        ("ours_over_plain_train", "training samples/s, ours / plain PyTorch sparse way",
         TARGETS["ours_over_plain"], True, ("ours", "plain")),
        ("matched_step_time_over_dlrm", "step time, MMoE 4 tasks + fusion at DLRM's dense compute / "
         "single-task DLRM", 1 + TARGETS["fusion_overhead_over_dlrm"], False, ("ours_matched", "dlrm")))
    for key, name, goal, higher, pair in goals:
        if key in rat:
            v = rat[key]
            met = v >= goal if higher else v <= goal
            suite.targets.append({"target": f"{name}, {fmt_rows(w.rows)} rows, ws={ws}",
                                  "goal": (">= " if higher else "<= ") + f"{goal:g}x", "measured": v, "met": met,
                                  "by": (v / goal) if higher else (goal / v),
                                  "other_cpu_cores": max(r.get("other_cpu_cores", 0.0) for r in map(find, pair)
                                                         if r is not None)})


def comparison(suite: Suite) -> None:
    """Section 1: every contender's samples/s at the comparison size, their ratios and plans."""
    from benchmarks.contenders import dlrm_layer_sizes

    plan, say = suite.plan, suite.say
    w = suite.workload(plan.compare_rows, plan.dim)
    warm, steps = plan.steps.get(w.rows, (3, 20))
    comp: Dict[str, Any] = {"workload": dataclasses.asdict(w), "warmup_steps": warm, "timed_steps": steps,
                            "eval_warmup_steps": plan.eval_steps[0], "eval_timed_steps": plan.eval_steps[1],
                            "dlrm_layer_sizes": dlrm_layer_sizes(w), "results": [], "ratios": {}}
    say(f"\n== 1. throughput at {fmt_rows(w.rows)} rows per table (4 tables, dim {w.dim}), batch {w.batch_size} "
        f"per rank; {steps} timed training steps after {warm} warm-up, {plan.eval_steps[1]} timed evaluation "
        f"steps after {plan.eval_steps[0]}; every contender the same batches ==")
    say(f"{'contender':<12} {'ws':>2} {'thr':>3} {'train samples/s':>16} {'(median step)':>14} {'ms/step':>8} "
        f"{'p90 ms':>7} {'eval samples/s':>15} {'others':>6}  ours/this (train)")
    for ws in suite.world_sizes:
        _comparison_rows(suite, comp, w, ws)
        rat = _ratios(suite, w, ws)
        comp["ratios"][f"ws{ws}"] = rat
        parts = _ratio_line(rat)
        if parts:
            say(f"  ws={ws}: " + "; ".join(parts))
        _comparison_targets(suite, rat, w, ws)
    say(f"  others: cores other processes used while the configuration ran (of {suite.cores}); above ~0.1 its "
        "timings are contended (re-run on a quiet machine, or --repeat N keeps the best of N)")
    say("  plans (ours, rank placement):")
    for ws in suite.world_sizes:
        r = suite.find("ours", w.rows, w.dim, ws)
        if r:
            say(f"  ws={ws}: " + "; ".join(short_plan_line(ln) for ln in r["plan"].splitlines()[1:]))
    suite.result["comparison"] = comp
    _profiles(suite, comp)
    _dense_compute(suite, comp)


_SHORT_CATEGORIES = {"embedding fwd": "emb fwd", "embedding bwd+update": "emb bwd+upd", "comms": "comms",
                     "dense matmul": "matmul", "dense other ops": "other ops", "grad accumulation": "grad acc",
                     "optimizer": "optim", "backward engine/DDP wait": "bwd wait", "python/framework": "python"}


def _profiles(suite: Suite, comp: Dict[str, Any]) -> None:
    """Where a training and an evaluation step's time goes, per contender (torch.profiler)."""
    profs = [r for r in comp["results"] if r.get("profile")]
    if not profs:
        return
    from benchmarks.profile import CATEGORIES

    say = suite.say
    for key, what in (("profile", "a training step"), ("profile_eval", "an evaluation step")):
        say(f"\n   where {what}'s time goes (torch.profiler, {suite.plan.profile_steps} steps, rank 0, ms per step)")
        say(f"   {'contender':<12} {'ws':>2} " + " ".join(f"{_SHORT_CATEGORIES[c]:>11}" for c in CATEGORIES)
            + f" {'total':>9}")
        for r in profs:
            p = r[key]
            say(f"   {r['contender']:<12} {r['world_size']:>2} " + " ".join(
                f"{p['ms_per_step'][c]:>11.1f}" for c in CATEGORIES) + f" {p['wall_ms_per_step']:>9.1f}")
    suite.result["profile"] = [{"contender": r["contender"], "world_size": r["world_size"], "mode": "train",
                                **r["profile"]} for r in profs]
    suite.result["profile"] += [{"contender": r["contender"], "world_size": r["world_size"], "mode": "eval",
                                 **r["profile_eval"]} for r in profs]


def _dense_compute(suite: Suite, comp: Dict[str, Any]) -> None:
    """The dense part's compute against the matmul ceiling."""
    peak, say = suite.matmul_peak, suite.say
    say(f"\n   dense compute: multiply-adds per sample of the weight matrices, x 6 (fwd + 2 x bwd, 2 FLOP each) x "
        f"train samples/s, against the fp32 matmul ceiling ({peak / 1e9:.0f} GFLOP/s)")
    say(f"   {'contender':<12} {'ws':>2} {'MACs/sample':>12} {'GFLOP/s':>8} {'of ceiling':>10}")
    for r in comp["results"]:
        flops = 6 * r["dense_macs_per_sample"] * r["train_samples_per_s"]
        r["dense_train_flops_per_s"] = flops
        r["dense_fraction_of_matmul_ceiling"] = flops / peak
        say(f"   {r['contender']:<12} {r['world_size']:>2} {r['dense_macs_per_sample']:>12,} {flops / 1e9:>8.1f} "
            f"{100 * flops / peak:>9.1f}%")


# ---- 2. scaling --------------------------------------------------------------------------------------

def _scaling_row(suite: Suite, r: Dict[str, Any]) -> None:
    """One configuration's line, for its worst rank (peak over floor)."""
    i = max(range(len(r["floor_per_rank"])),
            key=lambda k: r["peak_minus_before_per_rank"][k] / max(r["floor_per_rank"][k], 1))
    suite.say(f"{r['contender']:<9} {fmt_rows(r['rows']):>5} {r['dim']:>4} {r['world_size']:>2} "
              f"{r['train_steps']:>5} {num(r['train_samples_per_s']):>16} {num(r['eval_samples_per_s']):>15} "
              f"{gib(r['rss_before_per_rank'][i]):>10} {gib(r['peak_rss_per_rank'][i]):>9} "
              f"{gib(r['peak_minus_before_per_rank'][i]):>11} {gib(r['floor_per_rank'][i]):>7} "
              f"{r['peak_minus_before_per_rank'][i] / max(r['floor_per_rank'][i], 1):>11.2f} "
              f"{r['peak_rss_per_rank'][i] / max(r['floor_per_rank'][i], 1):>10.2f} {r['other_cpu_cores']:>6.2f}"
              + (f"  {gib(r['device_peak_per_rank'][i])}" if suite.device == "cuda" else "")
              + ("  (ru_maxrss above VmHWM: inherited)" if r["peak_rss_inherited"] else ""))


def _scaling_targets(suite: Suite, rows_s: List[Dict[str, Any]]) -> None:
    goal = TARGETS["peak_over_floor"]
    for r in rows_s:
        if r["contender"] == "ours" and r["rows"] >= 10**6 and suite.plan.isolated and not r["peak_rss_inherited"]:
            v = r["worst_rank_peak_over_floor"]
            suite.targets.append({"target": f"peak memory per rank (peak - before) / floor, ours, "
                                            f"{fmt_rows(r['rows'])} rows, dim {r['dim']}, ws={r['world_size']}",
                                  "goal": f"<= {goal:g}x", "measured": v, "met": v <= goal, "by": goal / v})


def scaling(suite: Suite) -> None:
    """Section 2: samples/s and peak memory per rank against the floor, by rows per table and ranks."""
    say = suite.say
    say(f"\n== 2. scaling: rows per table x world size (4 tables, batch {suite.plan.batch_size} per rank); memory "
        f"per rank (worst rank) ==")
    say("floor = the bytes the tables and their optimizer state must take on that rank: fp32 weights + row-wise "
        "Adagrad's one float per row (ours), weights + Adam's two moments on every replica (peers, plain)")
    say(f"{'contender':<9} {'rows':>5} {'dim':>4} {'ws':>2} {'steps':>5} {'train samples/s':>16} "
        f"{'eval samples/s':>15} {'RSS before':>10} {'peak RSS':>9} {'peak-before':>11} {'floor':>7} "
        f"{'(p-b)/floor':>11} {'peak/floor':>10} {'others':>6}"
        + ("  GPU peak" if suite.device == "cuda" else ""))
    order = {"ours": 0, "peers": 1, "plain": 2}
    rows_s = sorted((r for r in suite.results if r["contender"] in order),
                    key=lambda r: (r["dim"], r["rows"], order[r["contender"]], r["world_size"]))
    for r in rows_s:
        _scaling_row(suite, r)
    say("(GiB; RSS before: resident memory before the model was built; peak RSS: getrusage ru_maxrss of the "
        "rank's process)")
    for s in suite.skipped:
        say(f"{s['contender']:<9} {fmt_rows(s['rows']):>5} {s['dim']:>4}  skipped: {s['reason']}")
    if not suite.plan.isolated:
        say("(--quick: several configurations share a process, so peak RSS is the process's, "
            "not the configuration's)")
    suite.result["scaling"] = {"results": rows_s, "skipped": suite.skipped}
    _scaling_targets(suite, rows_s)


def failures(suite: Suite) -> None:
    if suite.failures:
        suite.result["failures"] = suite.failures
        suite.say("\nfailed configurations: " + "; ".join(
            f"{f['contender']} rows={f['rows']} ws={f['world_size']}: {f['error'][:120]}" for f in suite.failures))


# ---- 4. roofline -------------------------------------------------------------------------------------

def _roofline_line(x: Dict[str, Any]) -> str:
    extra = ""
    if "dense_adam_min_bytes_per_step" in x:
        extra = (f"  {x['dense_adam_min_bytes_per_step'] / 1e9:.2f} GB, "
                 f"{x['dense_adam_min_seconds_per_step']:.3f} s "
                 f"({100 * x['dense_adam_fraction_of_bandwidth']:.0f}% of bw at this rate)")
    return (f"{x['contender']:<12} {fmt_rows(x['rows']):>5} {x['dim']:>4} {x['world_size']:>2} "
            f"{x['steps_per_s']:>8.2f} {x['lookups_per_step']:>8,.0f} {x['unique_rows_per_step']:>9,.0f} "
            f"{x['embedding_bytes_per_step'] / 1e6:>8.2f} {x['embedding_bytes_per_s'] / 1e9:>7.3f} "
            f"{100 * x['fraction_of_bandwidth']:>6.2f}%" + extra)


def roofline(suite: Suite) -> None:
    """Section 4: bytes of embedding rows moved per second against the measured memory bandwidth."""
    from benchmarks.roofline import roofline_rows

    say = suite.say
    entries = [{**r, "workload": Workload(**r["workload"])} for r in suite.results if r["contender"] in CONTENDERS]
    rows_r = roofline_rows(entries, suite.bandwidth)
    say(f"\n== 4. roofline: embedding rows moved per second against the measured bandwidth "
        f"({suite.bandwidth / 1e9:.1f} GB/s copy, all cores) ==")
    say("bytes/step = lookups x dim x 4 (forward reads) + distinct rows x (2 x dim x 4 + 2 x state x 4) (update: "
        "weights and optimizer state read and written; state = 1 float/row row-wise Adagrad, 2 x dim Adam; "
        "once per DDP replica)")
    say(f"{'contender':<12} {'rows':>5} {'dim':>4} {'ws':>2} {'steps/s':>8} {'lookups':>8} {'distinct':>9} "
        f"{'MB/step':>8} {'GB/s':>7} {'of bw':>7}  dense Adam (peers): min GB/step, min s/step at bw")
    order_r = {c: i for i, c in enumerate(CONTENDERS)}
    rows_r.sort(key=lambda x: (x["dim"], x["rows"], order_r[x["contender"]], x["world_size"]))
    for x in rows_r:
        say(_roofline_line(x))
    suite.result["roofline"] = {"bandwidth_bytes_per_s": suite.bandwidth, "rows": rows_r}


# ---- the targets and the end -------------------------------------------------------------------------

def _target_line(t: Dict[str, Any]) -> str:
    meas = t["measured"]
    shown = t.get("shown") or (f"{meas:,.0f}" if meas > 1000 else f"{meas:.2f}x")
    how = "MET" if t["met"] else "NOT MET"
    by = "" if t["by"] is None else f"; {t['by']:.2f}x of the goal" if t["met"] else f"; {t['by']:.1%} of the goal"
    return (f"{how:<8} {t['target']}: {shown} (goal {t['goal']}" + by + ")"
            + (f"  CONTENDED: other processes used {t['other_cpu_cores']:.2f} cores; re-run on a quiet machine"
               if t["contended"] else ""))


def notes_and_targets(suite: Suite) -> None:
    """The notes, then every target: met or not, and whether other processes contended for the cores."""
    say = suite.say
    for note in suite.result["notes"]:
        say(f"note: {note}")
    if suite.targets:
        say("\n== targets (issue #6) ==" + ("  (--quick sizes: not the targets' configuration, indicative only)"
                                           if suite.args.quick else ""))
        for t in suite.targets:
            t["indicative_only"] = bool(suite.args.quick)
        for t in suite.targets:
            t["contended"] = t.get("other_cpu_cores", 0.0) > 0.1
            say(_target_line(t))
        suite.result["targets"] = suite.targets
    if suite.skipped and "scaling" not in suite.sections:
        suite.result["skipped"] = suite.skipped
