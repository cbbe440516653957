"""Turn the benchmarks' JSON (``benchmarks/results/``) into the README's PNG plots.

    python benchmarks/plot.py [--results benchmarks/results] [--out benchmarks/results]

- ``sweep_<metric>.png`` (from ``bench_sweep.json``): each library's time divided by the
  machine's floor, against the state's size, for the save stall, save to durable, and
  restore with the page cache warm and cold (log scales; 1 is the floor);
- ``training_throughput.png`` (from ``bench_training.json``, ``bench_train_loop.json`` and,
  when a GPU run left one, ``gpu_check.json``): the training throughput each library keeps
  while checkpointing, as a share of the same loop without checkpointing;
- ``distributed.png`` (from ``distributed_<ranks>x<MB>MB.json``): per rank count, each of
  our figures divided by DCP's (stall, time to a committed step, restore, resharded restore)
  against the size per rank (1 is DCP; below is faster);
- ``incremental.png`` (from ``bench_data_manager.json``): the replay buffer's saves through
  the DataManager, incremental against written whole: the bytes each save writes, and the
  disk the kept steps' buffer files take after each save;
- ``summary.md``: one report of every benchmark: the sweep as tables of ratios to the floor
  (median, with the min-max range), then each other benchmark's rows with its command and
  machine (the buffer operations, the DataManager against 1.0.0's save, ...).

Needs matplotlib (installed by ``nox -s bench``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent / "results"
METRICS = ("stall", "commit", "restore (warm)", "restore (cold)")
TITLES = {  # each plot says what its floor is
    "stall": "save stall / copy of the same bytes into preallocated memory",
    "commit": "save -> durable / the same bytes in one file: one O_DIRECT write, one fsync",
    "restore (warm)": "restore, warm cache / xxh3 pass over the mapped file",
    "restore (cold)": "restore, cold cache / xxh3 pass over the mapped file",
}


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def display_name(library: str, metric: str) -> str:
    """safetensors' ``load_file`` maps the file and reads nothing: say so beside restores."""
    if library == "safetensors" and metric.startswith("restore"):
        return "safetensors, lazy (unverified)"
    return library


def plot_sweep(sweep: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_metric: dict[str, dict[str, list[tuple[float, float, float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for row in sweep["sweep"]:
        if row["library"] == "floor":
            continue
        floor = row["floor_median"]
        by_metric[row["metric"]][display_name(row["library"], row["metric"])].append(
            (row["size_bytes"] / 1e6, row["median"] / floor, row["min"] / floor, row["max"] / floor)
        )
    for metric in METRICS:
        libraries = by_metric.get(metric)
        if not libraries:
            continue
        figure, axes = plt.subplots(figsize=(8, 5))
        for library, points in sorted(libraries.items()):
            points.sort()
            sizes = [p[0] for p in points]
            medians = [p[1] for p in points]
            errors = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
            style = {"linewidth": 3, "color": "black"} if library == "alphatriangle" else {}
            axes.errorbar(
                sizes, medians, yerr=errors, marker="o", capsize=3, label=library, **style
            )
        axes.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("state size (MB)")
        axes.set_ylabel("time / floor (log; 1 = the floor)")
        axes.set_title(TITLES[metric])
        axes.legend(fontsize=7, loc="best")
        axes.grid(True, which="both", alpha=0.3)
        path = out / f"sweep_{metric.replace(' ', '_').replace('(', '').replace(')', '')}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def plot_training(results: Path, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = []
    for name, title in (
        ("bench_training.json", "CPU: 42M-parameter MLP + Adam,\nsaved every 10 steps"),
        ("bench_train_loop.json", "alphatriangle train\n(reference run, 2 cores)"),
        ("gpu_check.json", "GPU: 8x4096 MLP + Adam (1.6 GB),\nsaved every 25 steps"),
    ):
        data = _load(results / name)
        if data is None:
            continue
        kept = data.get("throughput_kept")
        if isinstance(kept, dict):
            kept = {k: v for k, v in kept.items() if not k.startswith("no check")}
        elif isinstance(kept, float):
            kept = {"alphatriangle": kept}
        else:
            continue
        groups.append((title, kept))
    if not groups:
        return None
    figure, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4.5), squeeze=False)
    for axis, (title, kept) in zip(axes[0], groups, strict=True):
        names = list(kept)
        values = [100 * kept[n] for n in names]
        colors = ["black" if n.startswith("alphatriangle") else "tab:blue" for n in names]
        axis.barh(names, values, color=colors)
        for y, value in enumerate(values):
            axis.text(value + 0.5, y, f"{value:.1f}%", va="center", fontsize=8)
        axis.set_xlim(0, 110)
        axis.axvline(100, color="grey", linestyle="--", linewidth=1)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("throughput kept (% of no checkpointing)")
        axis.tick_params(axis="y", labelsize=8)
    figure.tight_layout()
    path = out / "training_throughput.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


DISTRIBUTED = (
    ("stall", "ours: stall", "DCP async_save: stall"),
    ("commit", "ours: commit", "DCP async_save: commit"),
    ("restore", "ours: restore", "DCP: restore"),
    ("resharded restore", "ours: resharded restore", "DCP: resharded restore"),
)


def plot_distributed(results: Path, out: Path) -> Path | None:
    """Ours over DCP's medians, against the size per rank, one panel per rank count."""
    by_ranks: dict[int, list[tuple[float, dict[str, float]]]] = defaultdict(list)
    for path in sorted(results.glob("distributed_*x*MB.json")):
        data = json.loads(path.read_text())
        medians = {row["measure"]: row["median"] for row in data["rows"]}
        ratios = {label: medians[ours] / medians[dcp] for label, ours, dcp in DISTRIBUTED}
        by_ranks[int(data["ranks"])].append((float(data["mb_per_rank"]), ratios))
    if not by_ranks:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        1, len(by_ranks), figsize=(5 * len(by_ranks), 4), squeeze=False, sharey=True
    )
    for axis, ranks in zip(axes[0], sorted(by_ranks), strict=True):
        points = sorted(by_ranks[ranks], key=lambda point: point[0])
        sizes = [size for size, _ in points]
        for label, _, _ in DISTRIBUTED:
            axis.plot(sizes, [ratios[label] for _, ratios in points], marker="o", label=label)
        axis.axhline(1, color="grey", linestyle="--", linewidth=1)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(f"{ranks} gloo ranks on CPU: ours / DCP", fontsize=9)
        axis.set_xlabel("MB per rank")
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel("time, ours / DCP (1 = DCP)")
    figure.tight_layout()
    path = out / "distributed.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_incremental(results: Path, out: Path) -> Path | None:
    """Per save: the buffer's bytes written and the disk of the kept steps, both ways."""
    data = _load(results / "bench_data_manager.json") or {}
    figures = data.get("incremental")
    if not figures or "buffer_disk_bytes" not in figures:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saves = range(1, len(figures["buffer_written_bytes"]) + 1)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (
        ("bytes written by the save", "buffer_written_bytes"),
        ("disk of the kept steps' buffers", "buffer_disk_bytes"),
    )
    for axis, (title, key) in zip(axes, panels, strict=True):
        for label, suffix in (("incremental", ""), ("whole", "_whole")):
            axis.plot(saves, [b / 1e6 for b in figures[key + suffix]], marker="o", label=label)
        axis.set_title(f"{title} (MB)", fontsize=9)
        axis.set_xlabel("save")
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)
    figure.suptitle(
        f"{data['experiences']:,} experiences, {figures['new']:,} new and "
        f"{figures['updates']} priority updates between saves, {figures['keep']} kept",
        fontsize=9,
    )
    figure.tight_layout()
    path = out / "incremental.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def summary_table(sweep: dict[str, Any]) -> str:
    sizes = sorted({row["size_bytes"] for row in sweep["sweep"]})
    lines = []
    for metric in METRICS:
        rows = [r for r in sweep["sweep"] if r["metric"] == metric]
        if not rows:
            continue
        libraries = sorted({r["library"] for r in rows}, key=lambda n: (n != "floor", n))
        header = " | ".join(f"{s / 1e6:.0f} MB" for s in sizes)
        lines += [f"\n**{metric}** (ratio to the floor; the floor in seconds)\n", f"| | {header} |"]
        lines.append("| --- " * (len(sizes) + 1) + "|")
        for library in libraries:
            cells = []
            for size in sizes:
                found = [r for r in rows if r["library"] == library and r["size_bytes"] == size]
                if not found:
                    cells.append("")
                    continue
                row = found[0]
                if library == "floor":
                    cells.append(f"{row['median']:.4f} s")
                else:
                    low, mid, high = (
                        row[k] / row["floor_median"] for k in ("min", "median", "max")
                    )
                    cells.append(f"{mid:.2f} ({low:.2f}-{high:.2f})")
            name = f"**{library}**" if library == "alphatriangle" else display_name(library, metric)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any(r.get("floor") == "paired" for r in sweep["sweep"]):
        lines.append(
            "\nalphatriangle's stalls and restores are divided by the floor timed alternately "
            "with them (the copy; the pass over its own data file); the floor row shows the "
            "shared floor. The commit floor is one O_DIRECT write and one fsync of the bytes."
        )
    absent = sweep.get("absent") or {}
    if absent:
        lines.append("\nAbsent: " + "; ".join(f"{k} ({v})" for k, v in absent.items()))
    return "\n".join(lines) + "\n"


def other_tables(results: Path) -> str:
    """Every other benchmark's rows (median, min, max, ratio to its baseline), with its
    command and machine: one report for the whole suite."""
    lines = []
    for path in sorted(results.glob("*.json")):
        data = _load(path)
        if data is None or path.stem == "bench_sweep" or "rows" not in data:
            continue
        machine = data.get("machine", {})
        where = ", ".join(
            str(machine[k])
            for k in ("cpu", "cpus", "memory_gib", "filesystem", "gpu")
            if machine.get(k)
        )
        lines += [f"\n### {data.get('benchmark', path.stem)}\n"]
        if data.get("command"):
            lines.append(f"`{data['command']}`" + (f" on {where}" if where else "") + "\n")
        lines += ["| measure | median s | min | max | ratio | baseline |", "| --- " * 6 + "|"]
        for row in data["rows"]:
            ratio = row.get("ratio")
            ratio_text = "" if ratio is None or math.isnan(ratio) else f"{ratio:.2f}"
            low = row.get("min", row["seconds"])
            high = row.get("max", row["seconds"])
            lines.append(
                f"| {row['measure']} | {row['seconds']:.4f} | {low:.4f} | {high:.4f} | "
                f"{ratio_text} | {row.get('baseline') or ''} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=HERE)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sweep = _load(args.results / "bench_sweep.json")
    if sweep is not None:
        for path in plot_sweep(sweep, args.out):
            print(f"wrote {path}")
    else:
        print("no bench_sweep.json: run benchmarks/bench_sweep.py first")
    text = "# Benchmark report\n"
    if sweep is not None:
        text += "\n## Size sweep\n" + summary_table(sweep)
    text += "\n## The other benchmarks\n" + other_tables(args.results)
    (args.out / "summary.md").write_text(text)
    print(f"wrote {args.out / 'summary.md'}")
    for path in (
        plot_training(args.results, args.out),
        plot_distributed(args.results, args.out),
        plot_incremental(args.results, args.out),
    ):
        if path is not None:
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
