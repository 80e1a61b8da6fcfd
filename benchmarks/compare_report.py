"""The report of benchmarks/compare.py: the Markdown summary of a result, the 2x targets' check, the sweep plots."""

from __future__ import annotations

from pathlib import Path

from timing import median

BASELINES = ("learn2learn", "higher", "torchopt")  # the libraries of the 2x targets


def ceiling(result: dict) -> float:
    """Median over the session's measurements of the best fp32 matmul GFLOP/s (CPU time)."""
    vals = [m["gflops_cpu_best"] for m in result["matmul"] if "gflops_cpu_best" in m]
    return median(vals)


def render(result: dict) -> str:
    lines = [
        f"Command: `{result['command']}`  ",
        *(
            [
                f"Stopped at the deadline: no measurement started after {result['stopped_at_deadline']}; the last column "
                "counts the repetitions each median covers.  "
            ]
            if result.get("stopped_at_deadline")
            else []
        ),
        f"torch {result['torch']}, Python {result['python']}, {result['threads']} thread(s) per process, "
        f"{result['machine']['cpus']} ({result['machine']['logical_cpus']} logical CPUs), load average before/after "
        f"{result['machine']['load_before']} / {result['machine'].get('load_after')}; {result['reps']} repetition(s) x {result['iters']} "
        f"timed iteration(s) per contender; wall time of the run {result.get('elapsed_s', 0) / 60:.1f} min. No GPU.",
        "",
    ]
    peak = ceiling(result)
    if peak == peak:
        lines.append(
            f"fp32 matmul ceiling (2048x2048 `torch.mm`, best of 7, median over the session): {peak:.1f} GFLOP/s per process CPU time."
        )
        lines.append("")
    for lib, why in result["skipped"].items():
        lines.append(f"- {lib} skipped: {why}")
    for w, entry in result["workloads"].items():
        lines += ["", f"### ({w}) {entry['description']}", ""]
        flops = entry.get("flops")
        if flops:
            lines.append(f"Model FLOPs per meta-update (FlopCounterMode on the plain loop): {flops / 1e9:.1f} GFLOP.")
            lines.append("")
        lines.append(
            "| contender | it/s (CPU) | it/s (wall) | peak RSS MB | faults/it | % matmul peak | grad rel. err | agree | "
            "fastadapt / it | fastadapt+best / it | reps |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        cs = entry["contenders"]
        fa = cs.get("fastadapt", {}).get("it_s_cpu")
        best_name = max(
            (c for c in cs if c.startswith("fastadapt") and "it_s_cpu" in cs[c]),
            key=lambda c: cs[c]["it_s_cpu"],
            default=None,
        )
        best = cs[best_name]["it_s_cpu"] if best_name else None
        for c, s in cs.items():
            if "it_s_cpu" not in s:
                lines.append(f"| {c} | {s.get('error')} | | | | | | | | | |")
                continue
            pct = f"{100 * flops * s['it_s_cpu'] / 1e9 / peak:.0f}%" if flops and peak == peak else "-"
            g = s.get("grad", {})
            gg = g.get("checked", g.get("all"))
            err = f"{gg['rel_err']:.1e}" if gg else "-"
            agree = ("yes" if gg["agree"] else "NO") if gg else "-"
            r1 = f"{fa / s['it_s_cpu']:.2f}x" if fa else "-"
            r2 = f"{best / s['it_s_cpu']:.2f}x" if best else "-"
            lines.append(
                f"| {c} | {s['it_s_cpu']:.3f} | {s['it_s_wall']:.3f} | {s['maxrss_mb']:.0f} | {s['minflt_per_iter']:.0f} | {pct} | "
                f"{err} | {agree} | {r1} | {r2} | {s['repetitions']} |"
            )
        for c, why in entry.get("skipped", {}).items():
            lines.append(f"| {c} | skipped: {why} | | | | | | | | | |")
        if best_name:
            lines.append("")
            lines.append(f"fastadapt+best = {best_name}.")
        ex = next((s["grad"].get("excluded") for s in cs.values() if s.get("grad", {}).get("excluded")), None)
        if ex:
            lines.append(
                f"Reptile's gradient check runs in float64 and excludes {', '.join(ex)}: their exact gradient is 0 (a BatchNorm follows), "
                "and Adam (beta1 = 0) turns the rounding noise into steps of +-lr. In float32 the surrogate gradient of 5 Adam steps is "
                "ill-conditioned (elementwise sign-like steps on near-zero gradients), so float32 runs of different libraries differ by "
                "~1e-3..1e-2 relative; see results.json, grad.all."
            )
    targets = check_targets(result)
    if targets:
        lines += ["", "### Targets", "", "| target | measured | met |", "|---|---|---|"] + targets
    return "\n".join(lines) + "\n"


def check_targets(result: dict) -> list[str]:
    rows = []
    ws = result["workloads"]

    def fastest_baseline(cs: dict) -> tuple[str, dict] | None:
        cands = [(c, cs[c]) for c in BASELINES if "it_s_cpu" in cs.get(c, {})]
        return max(cands, key=lambda x: x[1]["it_s_cpu"]) if cands else None

    for w, label in (("a", "(a) MAML 2nd order"), ("b", "(b) MAML 1st order")):
        if w not in ws:
            continue
        cs = ws[w]["contenders"]
        base = fastest_baseline(cs)
        if not base:
            continue
        for c in (c for c in cs if c.startswith("fastadapt") and "it_s_cpu" in cs[c]):
            speed = cs[c]["it_s_cpu"] / base[1]["it_s_cpu"]
            mem = cs[c]["maxrss_mb"] / base[1]["maxrss_mb"]
            met = speed >= 2.0 and mem <= 1.25
            rows.append(
                f"| {label}: {c} >= 2.0x fastest of learn2learn/higher/TorchOpt ({base[0]}), peak memory <= 1.25x | "
                f"{speed:.2f}x, memory {mem:.2f}x | {'yes' if met else 'NO'} |"
            )
    for w, label in (("d", "(d) ProtoNets"), ("e-protonet", "(e) ProtoNets end to end")):
        cs = ws.get(w, {}).get("contenders", {})
        if "it_s_cpu" in cs.get("plain", {}):
            for c in (c for c in cs if c.startswith("fastadapt") and "it_s_cpu" in cs[c]):
                speed = cs[c]["it_s_cpu"] / cs["plain"]["it_s_cpu"]
                rows.append(f"| {label}: {c} >= 2.0x plain eager | {speed:.2f}x | {'yes' if speed >= 2.0 else 'NO'} |")
    for e, k in (("e-maml", "a"), ("e-protonet", "d")):
        if e in ws and k in ws:
            ce, ck = ws[e]["contenders"], ws[k]["contenders"]
            ref = "plain" if k == "d" else None
            for c in (
                c for c in ce if c.startswith("fastadapt") and "it_s_cpu" in ce[c] and "it_s_cpu" in ck.get(c, {})
            ):
                if ref is None:
                    be, bk = fastest_baseline(ce), fastest_baseline(ck)
                    if not be or not bk:
                        continue
                    re_, rk = ce[c]["it_s_cpu"] / be[1]["it_s_cpu"], ck[c]["it_s_cpu"] / bk[1]["it_s_cpu"]
                else:
                    if "it_s_cpu" not in ce.get(ref, {}) or "it_s_cpu" not in ck.get(ref, {}):
                        continue
                    re_, rk = ce[c]["it_s_cpu"] / ce[ref]["it_s_cpu"], ck[c]["it_s_cpu"] / ck[ref]["it_s_cpu"]
                rows.append(
                    f"| ({e}) end-to-end ratio of {c} >= kernel-only ratio ({k}) | {re_:.2f}x vs {rk:.2f}x | "
                    f"{'yes' if re_ >= rk * 0.95 else 'NO'} (5% noise allowance) |"
                )
    return rows


def plot_sweeps(result: dict, out_dir: Path) -> None:
    """Time and memory against meta-batch size and inner steps, first vs second order (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["sweeps"]["rows"] if "sec_cpu" in r]
    for axis, xlabel, fname in (
        ("meta_batch", "meta-batch size (tasks), 1 inner step", "sweep_meta_batch.png"),
        (
            "inner_steps",
            f"inner steps (meta-batch {result['sweeps']['inner_steps_meta_batch']})",
            "sweep_inner_steps.png",
        ),
    ):
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
        for c in result["sweeps"]["contenders"]:
            for algo, style in (("maml", "-"), ("fomaml", "--")):
                pts = sorted(
                    (r[axis], r["sec_cpu"], r["maxrss_mb"])
                    for r in rows
                    if r["axis"] == axis and r["contender"] == c and r["algo"] == algo
                )
                if not pts:
                    continue
                xs, ts, ms = zip(*pts)
                label = f"{c} ({'2nd' if algo == 'maml' else '1st'} order)"
                ax_t.plot(xs, ts, style, marker="o", label=label)
                ax_m.plot(xs, ms, style, marker="o", label=label)
        for ax, ylabel in ((ax_t, "CPU seconds per meta-update"), (ax_m, "peak RSS (MB)")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            if axis == "meta_batch":
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
        ax_t.legend(fontsize=7)
        fig.suptitle(
            f"MAML on Conv4, 5-way 1-shot: {xlabel.split(',')[0].split(' (')[0]} sweep ({result['threads']} thread, shared machine)"
        )
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=80)
        plt.close(fig)
