"""The compatibility matrix as Markdown and JSON files (`beacon pilot`) and cells for the HTML report."""

from __future__ import annotations

from pathlib import Path

from beacon_golem.core.files import write_text_atomic
from beacon_golem.core.matrix import Matrix, RuntimeCell
from beacon_golem.reports.markdown import md_cell


def _num(value: float | None, unit: str = "") -> str:
    return f"{value:g}{unit}" if value is not None else "—"


def runtimes_text(runtimes: list[RuntimeCell], possible: bool) -> str:
    cells = [r for r in runtimes if r.can_run == possible]
    return ", ".join(r.label for r in cells) or "—"


def render_markdown(matrix: Matrix) -> str:
    """The matrix as Markdown: nodes, checks by node, runtimes by node, then every reason."""
    rows = matrix.rows
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("pass", "warn", "fail", "error")}
    lines = [
        "# Compatibility matrix" + (f": run {matrix.run_id}" if matrix.run_id else ""),
        "",
        f"{len(rows)} node(s) on a {matrix.fleet or '?'} fleet, {counts['pass']} pass, {counts['warn']} warn, "
        f"{counts['fail']} fail, {counts['error']} without a probe; generated {matrix.generated_at:%Y-%m-%d %H:%M:%S} UTC.",
        "",
        "## Nodes",
        "",
        "| Node | Provider | Region | GPU | VRAM | Driver | CUDA | Probe | Runtimes possible | Not possible |",
        "|---|---|---|---|---:|---|---|---|---|---|",
    ]
    for r in rows:
        probe = r.status.upper() if r.status != "error" else f"ERROR: {r.error}"
        lines.append(
            f"| {md_cell(r.node_id)} | {md_cell(r.provider or '—')} | {md_cell(r.region or '—')} | {md_cell(r.gpu)} | "
            f"{_num(r.vram_gib, ' GiB')} | {md_cell(r.driver or '—')} | {md_cell(r.cuda or '—')} | {md_cell(probe)} | "
            f"{md_cell(runtimes_text(r.runtimes, True))} | {md_cell(runtimes_text(r.runtimes, False))} |"
        )
    probed = matrix.probed
    if probed:
        head = "| Check | " + " | ".join(md_cell(r.node_id) for r in probed) + " |"
        lines += ["", "## Checks", "", head, "|---|" + "---|" * len(probed)]
        for check_id, title in matrix.checks.items():
            found = [r.check(check_id) for r in probed]
            cells = [c.status.upper() if c else "—" for c in found]
            lines.append(f"| {md_cell(title)} | " + " | ".join(cells) + " |")
        lines += ["", "## Runtimes", "", head.replace("| Check |", "| Runtime |"), "|---|" + "---|" * len(probed)]
        for name in matrix.runtimes:
            cells = []
            for r in probed:
                cell = r.runtime(name)
                if cell is None:
                    cells.append("—")
                else:
                    cells.append(f"{cell.accelerator.upper()} ({cell.status})" if cell.can_run and cell.accelerator else "no")
            lines.append(f"| {md_cell(name)} | " + " | ".join(cells) + " |")
        tally = ", ".join(f"{n}: {t.gpu} GPU / {t.cpu} CPU / {t.no} no" for n, t in matrix.summary.items())
        lines += ["", f"Nodes per runtime: {tally}."]
    lines += ["", "## Why", ""]
    for r in rows:
        lines.append(f"### {md_cell(r.node_id)}" + (f" ({md_cell(r.provider)})" if r.provider else ""))
        lines.append("")
        if r.status == "error":
            lines.append(f"- no probe: {md_cell(r.error)}")
        threads = f" ({r.cpu_cores} threads)" if r.cpu_cores else ""
        facts = [
            f"serves {r.serving}" if r.serving else None,
            f"OS {r.os}" if r.os else None,
            f"CPU {r.cpu or '?'}{threads}" if r.cpu or r.cpu_cores else None,
            f"RAM {r.ram_gib:g} GiB" if r.ram_gib is not None else None,
            f"GPU facts from the {r.gpu_source}" if r.gpu_source and r.gpu_source != "probe" else None,
        ]
        if any(facts):
            lines.append("- " + "; ".join(f for f in facts if f))
        for c in r.checks:
            if c.status in ("warn", "fail"):
                lines.append(f"- {c.status.upper()} {md_cell(c.title)}: {md_cell(c.reason)}")
        for rt in r.runtimes:
            verdict = f"{rt.accelerator.upper()}, {rt.status}" if rt.can_run and rt.accelerator else "not possible"
            lines.append(f"- {md_cell(rt.runtime)} ({verdict}): {md_cell('; '.join(rt.reasons))}")
        lines += [f"- note: {md_cell(n)}" for n in r.notes]
        lines.append("")
    if matrix.notes:
        lines += ["## Fleet notes", ""] + [f"- {md_cell(n)}" for n in matrix.notes] + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_matrix(matrix: Matrix, out_dir: Path) -> tuple[Path, Path]:
    """Write `matrix.md` and `matrix.json` into `out_dir`; returns their paths."""
    md, js = out_dir / "matrix.md", out_dir / "matrix.json"
    write_text_atomic(md, render_markdown(matrix))
    write_text_atomic(js, matrix.model_dump_json(indent=2) + "\n")
    return md, js


