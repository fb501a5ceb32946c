"""How the time and peak memory of a training step grow with model and batch size.

    python -m benchmarks.scaling --json runs/scaling.json --html runs/scaling.html

From a small random-weight base (BASE), one axis at a time is doubled: n_layers, d_mlp,
batch and sequence length. Each point is measured by ``perf.py`` (floor and ours, each in a
fresh process), and the log-log slope per axis (numpy polyfit) says how a cost grows: 1 is
linear; below 1, part of the cost does not depend on that axis.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks import perf

MODES = ("floor", "ours")
METRICS = (("seconds_per_step", "time"), ("peak_mib", "memory"))


@dataclass(frozen=True)
class Point:
    """One configuration: a model shape and the batch it is trained on."""

    shape: perf.Shape
    batch: int
    seq: int

    def value(self, axis: str) -> int:
        return getattr(self, axis) if axis in ("batch", "seq") else getattr(self.shape, axis)

    def along(self, axis: str, value: int) -> Point:
        if axis in ("batch", "seq"):
            return replace(self, **{axis: value})
        return replace(self, shape=replace(self.shape, **{axis: value}))


BASE = Point(perf.Shape(2, 128, 4, 512, d_head=32, d_vocab=1000), batch=8, seq=32)
AXES = {
    "n_layers": (1, 2, 4, 8),
    "d_mlp": (256, 512, 1024, 2048),
    "batch": (4, 8, 16, 32),
    "seq": (16, 32, 64, 128),
}


def measure_grid(base: Point, axes: dict, steps: int, device: str) -> list[dict]:
    """Every point on every axis, each configuration measured once even if on two axes."""
    seen: dict[Point, dict] = {}
    rows = []
    for axis, values in axes.items():
        for value in values:
            point = base.along(axis, value)
            if point not in seen:
                seen[point] = {mode: _measure(point, mode, steps, device) for mode in MODES}
                print(f"measured {axis}={value}", file=sys.stderr, flush=True)
            rows.append({"axis": axis, "value": value, **asdict(point), **seen[point]})
    return rows


def _measure(point: Point, mode: str, steps: int, device: str) -> dict:
    name = perf.shape_name(point.shape)
    return perf.run_one(name, mode, point.batch, point.seq, steps, device)


def slopes(rows: list[dict]) -> dict:
    """Log-log slope of each cost against each axis, per mode (None with < 2 usable points)."""
    out = {}
    for axis in dict.fromkeys(r["axis"] for r in rows):
        on_axis = [r for r in rows if r["axis"] == axis]
        for mode in MODES:
            for key, label in METRICS:
                pts = [(r["value"], r[mode].get(key)) for r in on_axis]
                pts = [(x, y) for x, y in pts if y is not None and y > 0]
                out[f"{axis}/{mode}/{label}"] = _slope(pts)
    return out


def _slope(points: list[tuple[float, float]]) -> float | None:
    if len({x for x, _ in points}) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def print_tables(rows: list[dict], fitted: dict) -> None:
    print("| axis | value | floor step | our step | ratio | floor mem | our mem | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        f, o = r["floor"], r["ours"]
        if "seconds_per_step" not in f or "seconds_per_step" not in o:
            print(f"| {r['axis']} | {r['value']} | not measured: see JSON |")
            continue
        t = o["seconds_per_step"] / f["seconds_per_step"]
        m = o["peak_mib"] / max(f["peak_mib"], 1e-9)
        print(
            f"| {r['axis']} | {r['value']} | {f['seconds_per_step'] * 1e3:.1f} ms | "
            f"{o['seconds_per_step'] * 1e3:.1f} ms | {t:.2f} | {f['peak_mib']:.0f} MiB | "
            f"{o['peak_mib']:.0f} MiB | {m:.2f} |"
        )
    print("\nlog-log slope\n")
    print("| axis | floor time | our time | floor memory | our memory |")
    print("|---|---|---|---|---|")
    for axis in dict.fromkeys(r["axis"] for r in rows):
        cells = [
            _fmt(fitted[f"{axis}/{mode}/{label}"]) for label in ("time", "memory") for mode in MODES
        ]
        print(f"| {axis} | " + " | ".join(cells) + " |")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def figure(rows: list[dict], path: Path) -> None:
    """Log-log lines per axis: time on the top row, memory on the bottom."""
    from plotly.subplots import make_subplots

    axes = list(dict.fromkeys(r["axis"] for r in rows))
    fig = make_subplots(rows=2, cols=len(axes), subplot_titles=axes + [""] * len(axes))
    colours = {"floor": "#888888", "ours": "#1f77b4"}
    for col, axis in enumerate(axes, start=1):
        on_axis = [r for r in rows if r["axis"] == axis]
        for row, (key, label) in enumerate(METRICS, start=1):
            for mode in MODES:
                fig.add_scatter(
                    x=[r["value"] for r in on_axis],
                    y=[r[mode].get(key) for r in on_axis],
                    name=mode,
                    legendgroup=mode,
                    showlegend=row == 1 and col == 1,
                    line={"color": colours[mode]},
                    row=row,
                    col=col,
                )
            fig.update_xaxes(type="log", title_text=axis, row=row, col=col)
            unit = "seconds per step" if label == "time" else "peak MiB"
            fig.update_yaxes(type="log", title_text=unit if col == 1 else None, row=row, col=col)
    fig.update_layout(title="Cost of a training step against size (log-log)", height=700)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=Path("runs/scaling.json"))
    parser.add_argument("--html", type=Path, default=Path("runs/scaling.html"))
    args = parser.parse_args()
    rows = measure_grid(BASE, AXES, args.steps, args.device)
    fitted = slopes(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"base": asdict(BASE), "rows": rows, "slopes": fitted}
    args.json.write_text(json.dumps(result, indent=2))
    figure(rows, args.html)
    print_tables(rows, fitted)
    print(f"wrote {args.json} and {args.html}")


if __name__ == "__main__":
    main()
