"""Plain-text views of measured results: what the command line prints, and what a notebook
can print the same way."""

from __future__ import annotations

import math
from collections.abc import Mapping

from .discovery import Discovery


def number(x) -> str:
    return "n/a" if isinstance(x, float) and math.isnan(x) else f"{x:.4f}"


def faithfulness_table(run: Discovery) -> str:
    """The circuit against a random circuit of the same size, on the held-out pairs of its
    training frames and, when measured, on frames the fit never saw."""
    rows = [
        ("KL(full || circuit)", "kl"),
        ("metric recovered", "recovered"),
        ("accuracy", "accuracy_circuit"),
        ("full model accuracy", "accuracy_full"),
    ]
    splits = run.test_sets()
    lines = [f"{'held-out pairs':<22}" + "".join(f" {name:>21}" for name, _, _ in splits)]
    lines.append(f"{'':<22}" + f" {'circuit':>10} {'random':>10}" * len(splits))
    for label, key in rows:
        cells = ""
        for _, own, rand in splits:
            other = "" if key == "accuracy_full" else number(getattr(rand, key))
            cells += f" {number(getattr(own, key)):>10} {other:>10}"
        lines.append(f"{label:<22}{cells}")
    return "\n".join(lines)


def settling_line(run: Discovery) -> str:
    """Kept against target, and how much the size still moved over the last fifth of the
    steps (the targeted granularities, or every one when none had a target)."""
    rows = [r for r in run.settling if r.target is not None] or list(run.settling)
    parts = [
        f"{r.granularity} {100 * r.kept:.2f} %"
        + ("" if r.target is None else f" for {100 * r.target:.1f} %")
        + f" (moved {100 * r.change:.1f} %)"
        for r in rows
    ]
    return "size at the end (change over the last fifth of the steps): " + ", ".join(parts)


def sizing_line(circuit) -> str | None:
    """How the size was chosen: each fit of the search with its faithfulness on the
    validation pairs (None for a fit at a given size)."""
    rungs = circuit.fit_info.get("sizing")
    if not rungs:
        return None
    level = circuit.config.get("faithfulness") or {}
    low, high = level.get("recovered", (float("nan"),) * 2)
    parts = [
        f"x{r['scale']:g}: KL {r['kl_share']:.3f} of empty"
        + ("" if r["recovered"] is None else f", recovered {r['recovered']:.2f}")
        + (" (met)" if r["met"] else " (missed)")
        for r in rungs
    ]
    chosen = "the smallest that met" if any(r["met"] for r in rungs) else "none met; closest to"
    return (
        f"size chosen: targets x{circuit.fit_info['target_scale']:g}, {chosen} "
        f"KL <= {level.get('kl', float('nan')):g} of the empty circuit's and recovered in "
        f"[{low:g}, {high:g}] on {circuit.fit_info.get('n_validation')} validation pairs "
        f"({'; '.join(parts)})"
    )


def top_nodes_line(run: Discovery) -> str:
    """The nodes whose removal costs most, where the top head looks, and the named roles."""
    anatomy = run.anatomy
    top = ", ".join(f"{e.node} +{e.delta_kl:.3f}" for e in anatomy.effects.top(6))
    line = f"nodes that matter most (KL increase when removed alone): {top}"
    if anatomy.heads is not None:
        head = anatomy.heads.heads[0]
        looks = max(head.attention, key=head.attention.get)
        line += (
            f"\ntop head {head.head} attends mostly to {looks} "
            f"({head.attention[looks]:.2f}), direct effect {head.direct_effect:+.3f}"
        )
    named = [f"{r.head} {r.role}" for r in anatomy.roles if r.role != "unclassified"]
    if anatomy.roles:
        line += f"\nhead roles: {', '.join(named) or 'none named'}"
        line += f" ({len(anatomy.roles) - len(named)} of {len(anatomy.roles)} unclassified)"
    return line


def edges_table(summary: Mapping) -> str:
    """Learned edges against other edge choices at the same count, held out."""
    lines = [f"{'held-out, edges chosen by':<28} {'edges':>7} {'KL':>8} {'recovered':>10}"]
    for rule, r in summary["evaluation"].items():
        kept, kl, rec = r["kept"]["edge"], number(r["kl"]), number(r["recovered"])
        lines.append(f"{rule:<28} {kept:>7} {kl:>8} {rec:>10}")
    return "\n".join(lines)


def discovery_text(run: Discovery) -> str:
    """Everything a discovery measured, as the command line prints it."""
    lines = [run.circuit.summary(), settling_line(run)]
    lines += [line for line in [sizing_line(run.circuit)] if line]
    lines.append(faithfulness_table(run))
    if run.curve is not None:
        lines.append(f"faithfulness vs size: CPR {run.curve.cpr:.3f}, CMD {run.curve.cmd:.3f}")
    if run.edges is not None:
        strongest = ", ".join(f"{e.source}->{e.target} {e.score:+.3f}" for e in run.edges[:5])
        lines.append(f"{len(run.edges)} edges; strongest: {strongest}")
    if run.learned_summary is not None:
        lines.append(edges_table(run.learned_summary))
    if run.anatomy is not None:
        lines.append(top_nodes_line(run))
    if run.timings is not None:
        parts = run.timings.parts(run.steps_trained())
        parts = ", ".join(f"{name} {s:.0f} s" for name, s in parts.items())
        memory = "" if run.peak_rss_mib is None else f", peak memory {run.peak_rss_mib:.1f} MiB"
        lines.append(f"wall time {run.timings.wall:.1f} s ({parts}){memory}")
    return "\n".join(lines)
