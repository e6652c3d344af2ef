"""Benchmark results JSON (see result_file.py) -> a markdown report, and PNG plots when matplotlib is installed.

    python bench/report.py [bench/results/X.json ...] [--out bench/results/report]

Without files it reads the newest JSON in bench/results/. Per record: a header (device, driver, versions,
commit, measured roofs) and one table per benchmark group, peers' rows beside ours with our speed-up over
them. Plots: the roofline fraction of each of our benchmarks; end-to-end tokens/s against batch, one line
per context; our speed-up over each peer.
"""
import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

from result_file import load_record

RESULTS = Path(__file__).resolve().parent / "results"
OURS = ("ours", "triton")  # what benchmarks call our implementation in their `impl`
E2E_GROUPS = ("e2e_decode", "e2e_prefill")
EXTRA_COLUMNS = (("tokens/s", "tokens/s"), ("ttft_ms", "TTFT ms"), ("peak_mem_GB", "peak GB"))


# -- reading one benchmark entry --------------------------------------------------------------
def impl_of(bench: dict) -> str:
    return str(bench["params"].get("impl") or bench["extra_info"].get("impl") or "ours")


def is_ours(bench: dict) -> bool:
    return impl_of(bench) in OURS


def shape_of(bench: dict) -> tuple:
    """The params that say what was measured (all but the implementation), in a fixed order."""
    return tuple(sorted((k, v) for k, v in bench["params"].items() if k != "impl"))


def ms_of(bench: dict) -> float | None:
    ms = bench["extra_info"].get("ms")
    return ms if ms is not None else (bench["stats"].get("median") or math.nan) * 1e3


def _number(value) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def fmt(value) -> str:
    """A measured number to 3-4 significant figures, thousands separated; '–' for none (or a rate not counted)."""
    v = _number(value)
    if not v:
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3g}"


def pct(value) -> str:
    """A fraction as a percentage: one decimal, or two significant digits below 1 %."""
    v = _number(value)
    if not v:
        return "–"
    return f"{100 * v:.1f}%" if abs(v) >= 0.01 else f"{100 * v:.2g}%"


def shape_label(shape: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in shape) or "–"


# -- markdown ---------------------------------------------------------------------------------
def header(record: dict) -> list[str]:
    commit = f"{record.get('commit', 'unknown')}{' (dirty)' if record.get('dirty') else ''}"
    copy, peak = _number(record.get("copy_bytes_per_s")), _number(record.get("bf16_flops"))
    return [
        f"## {record.get('device', 'unknown device')}, {record.get('date', '')}", "",
        (f"driver {record.get('driver', 'unknown')} · torch {record.get('torch', '?')} · "
         f"triton {record.get('triton', '?')} · commit {commit}"), "",
        (f"measured copy bandwidth {fmt(copy / 1e9) if copy else '–'} GB/s · "
         f"dense bf16 peak {fmt(peak / 1e12) if peak else '–'} TFLOP/s (looked up)"), "",
        "ms: median; % copy BW and % bf16 peak: the share of those roofs reached; "
        "ours faster ×: a peer's time over ours for the same shape (below 1: the peer is faster).", "",
    ]


def groups(record: dict) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for bench in record["benchmarks"]:
        out[bench.get("group") or bench["name"]].append(bench)
    return dict(out)


def ordered_rows(benches: list[dict]) -> list[dict]:
    """By shape in first-seen order; within a shape ours first, then the peers by name."""
    first = {}
    for b in benches:
        first.setdefault(shape_of(b), len(first))
    return sorted(benches, key=lambda b: (first[shape_of(b)], not is_ours(b), impl_of(b)))


def group_table(benches: list[dict]) -> list[str]:
    ours_ms = {shape_of(b): ms_of(b) for b in benches if is_ours(b)}
    extras = [(key, title) for key, title in EXTRA_COLUMNS if any(key in b["extra_info"] for b in benches)]
    columns = ["shape", "impl", "ms", "GB/s", "TFLOP/s", "% copy BW", "% bf16 peak", "ours faster ×"]
    lines = ["| " + " | ".join(columns + [t for _, t in extras]) + " |", "|" + "---|" * (len(columns) + len(extras))]
    for b in ordered_rows(benches):
        info, ms = b["extra_info"], ms_of(b)
        ours = ours_ms.get(shape_of(b))
        speedup = fmt(ms / ours) if not is_ours(b) and ours and _number(ms) else "–"
        cells = [shape_label(shape_of(b)), impl_of(b), fmt(ms), fmt(info.get("GB/s")), fmt(info.get("TFLOP/s")),
                 pct(info.get("frac_copy_bw")), pct(info.get("frac_bf16_peak")), speedup]
        lines.append("| " + " | ".join(cells + [fmt(info.get(key)) for key, _ in extras]) + " |")
    return lines


def markdown(record: dict, images: list[str], note: str = "") -> str:
    lines = header(record)
    for name, benches in groups(record).items():
        lines += [f"### {name}", ""] + group_table(benches) + [""]
    lines += [f"![{Path(i).stem}]({i})" for i in images]
    if note:
        lines += ["", note]
    return "\n".join(lines).rstrip() + "\n"


# -- plots ------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_roofline(record: dict, path: Path) -> bool:
    """Our benchmarks' share of the nearer roof: copy bandwidth (blue) or bf16 peak (orange)."""
    rows = []
    for name, benches in groups(record).items():
        for b in benches:
            if is_ours(b):
                bw, fl = (_number(b["extra_info"].get(k)) or 0.0 for k in ("frac_copy_bw", "frac_bf16_peak"))
                rows.append((f"{name}: {shape_label(shape_of(b))}", max(bw, fl), bw >= fl))
    if not rows:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 1 + 0.25 * len(rows)))
    ax.barh([r[0] for r in rows], [100 * r[1] for r in rows], color=["tab:blue" if r[2] else "tab:orange" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("% of roof (blue: measured copy bandwidth, orange: dense bf16 peak)")
    ax.set_title(f"roofline share, {record.get('device', '')}")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_e2e(record: dict, path: Path) -> bool:
    """tokens/s against batch, one line per context, a panel per (step, preset); peers dashed."""
    benches = [b for g in E2E_GROUPS for b in groups(record).get(g, [])]
    panels = sorted({(b["group"], b["params"].get("preset")) for b in benches}, key=str)
    if not panels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, (group, preset) in zip(axes[0], panels):
        lines = defaultdict(list)
        for b in benches:
            if (b["group"], b["params"].get("preset")) == (group, preset) and _number(b["extra_info"].get("tokens/s")):
                lines[(impl_of(b), b["params"].get("context"))].append((b["params"].get("batch"), b["extra_info"]["tokens/s"]))
        for (impl, context), points in sorted(lines.items(), key=str):
            points.sort()
            ax.plot(*zip(*points), marker="o", linestyle="-" if impl in OURS else "--", label=f"{impl}, ctx {context}")
        batches = sorted({x for points in lines.values() for x, _ in points})
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="tokens/s", title=f"{group}: {preset}")
        ax.set_xticks(batches, [str(b) for b in batches], minor=False)
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_peers(record: dict, path: Path) -> bool:
    """Our speed-up over each peer (their time / ours), per shape, a panel per group that has peers."""
    panels = []
    for name, benches in groups(record).items():
        ours_ms = {shape_of(b): ms_of(b) for b in benches if is_ours(b)}
        bars = [(f"{shape_label(shape_of(b))} [{impl_of(b)}]", ms_of(b) / ours_ms[shape_of(b)])
                for b in ordered_rows(benches)
                if not is_ours(b) and _number(ours_ms.get(shape_of(b))) and _number(ms_of(b))]
        if bars:
            panels.append((name, bars))
    if not panels:
        return False
    plt = _pyplot()
    sizes = [1 + 0.25 * len(bars) for _, bars in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, sum(sizes)), squeeze=False,
                             gridspec_kw={"height_ratios": sizes})
    for ax, (name, bars) in zip(axes[:, 0], panels):
        ax.barh([b[0] for b in bars], [b[1] for b in bars], color=["tab:green" if b[1] >= 1 else "tab:red" for b in bars])
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.invert_yaxis()
        ax.set_title(f"{name}: ours × faster than the peer", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


PLOTS = (("roofline", plot_roofline), ("e2e", plot_e2e), ("peers", plot_peers))


# -- the command ------------------------------------------------------------------------------
def write_report(paths: list[Path], out: Path) -> Path:
    """report.md (and PNGs beside it) in `out` for the records in `paths`."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        _pyplot()
        note = ""
    except ImportError:
        note = "_matplotlib is not installed, so no plots: `pip install -e \".[plot]\"` adds them._"
    sections = []
    for path in paths:
        record = load_record(path)
        images = []
        if not note:
            for kind, plot in PLOTS:
                image = f"{Path(path).stem}_{kind}.png"
                if plot(record, out / image):
                    images.append(image)
        sections.append(markdown(record, images, note))
    report = out / "report.md"
    report.write_text("# Benchmark results\n\n" + "\n".join(sections))
    return report


def newest_result(directory: Path | None = None) -> Path:
    directory = directory or RESULTS
    found = sorted(Path(directory).glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no results JSON in {directory}: run `python -m pytest bench/` on a GPU first")
    return found[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", type=Path, help="results JSON files (default: the newest in bench/results)")
    parser.add_argument("--out", type=Path, default=RESULTS / "report", help="directory for report.md and the plots")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.results or [newest_result()], args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
