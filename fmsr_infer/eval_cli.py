"""`fmsr-eval`: sweep samplers, time grids, temperatures and network calls for a model.

Writes to the output folder:
- sweep.csv: one row per setting with the dataset means (see `fmsr_infer.evaluation`).
- sweep_per_image.csv: one row per setting and image.
- sweep.md: the best setting per call count, the PSNR-sharpness frontier, all settings.
- sweep.png: Y-PSNR, Y-SSIM and the high-frequency ratio against network calls, one row
  per temperature, and the frontier.
"""

from __future__ import annotations

import csv
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import click

from fmsr_infer.backends import BACKENDS
from fmsr_infer.cli import DEFAULT_MODEL
from fmsr_infer.evaluation import (
    GridSpec,
    Measurement,
    Summary,
    SweepSetting,
    best_psnr_by_calls,
    pair_images,
    pareto_frontier,
    run_sweep,
    summarize,
    sweep_settings,
)
from fmsr_infer.model_info import ModelError, ModelInfo, load_info
from fmsr_infer.samplers import SAMPLERS, network_calls

log = logging.getLogger("fmsr_infer")

DEFAULT_GRIDS = "uniform,shifted:3,image_end"
DEFAULT_TEMPERATURES = "0,0.5,1"
PSNR_TOLERANCE_DB = 0.1


# ---------------------------------------------------------------------------------------
# Option parsing


def _split(value: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise click.BadParameter("expected a comma-separated list with at least one item")
    return items


def _parse_samplers(ctx, param, value: str) -> list[str]:
    names = _split(value)
    unknown = [name for name in names if name not in SAMPLERS]
    if unknown:
        raise click.BadParameter(f"unknown samplers {unknown}; expected some of {tuple(SAMPLERS)}")
    return names


def _parse_grids(ctx, param, value: str) -> list[GridSpec]:
    try:
        return [GridSpec.parse(item) for item in _split(value)]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _parse_temperatures(ctx, param, value: str) -> list[float]:
    temperatures = []
    for item in _split(value):
        try:
            temperature = float(item)
        except ValueError:
            raise click.BadParameter(f"invalid temperature {item!r}") from None
        if not 0.0 <= temperature <= 2.0:
            raise click.BadParameter(f"temperature {temperature} is outside [0, 2]")
        temperatures.append(temperature)
    return temperatures


# ---------------------------------------------------------------------------------------
# Tables


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def _setting_fields(setting: SweepSetting | None, calls: int) -> dict:
    return {
        "sampler": "bicubic" if setting is None else setting.sampler,
        "grid": "" if setting is None else setting.grid.name,
        "shift": "" if setting is None or setting.grid.shift is None else setting.grid.shift,
        "temperature": "" if setting is None else setting.temperature,
        "steps": 0 if setting is None else setting.steps,
        "calls": calls,
    }


def write_summary_csv(path: Path, summaries: list[Summary], frontiers: dict[int, list]) -> None:
    """Write one row per setting with its dataset means and frontier memberships."""
    members = {calls: {id(s) for s in frontier} for calls, frontier in frontiers.items()}
    with path.open("w", newline="") as f:
        writer = None
        for s in summaries:
            row = _setting_fields(s.setting, s.calls) | {
                "psnr_y": _fmt(s.psnr_y, 4),
                "ssim_y": _fmt(s.ssim_y, 5),
                "hf_ratio": _fmt(s.hf_ratio, 4),
                "hf_error": _fmt(s.hf_error, 4),
                "seconds_per_image": _fmt(s.seconds_per_image, 3),
                "images": s.images,
            }
            for calls, ids in members.items():
                row[f"frontier_max_{calls}_calls"] = int(id(s) in ids)
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)


def write_per_image_csv(path: Path, measurements: list[Measurement]) -> None:
    """Write one row per setting and image."""
    fields = ["image", "sampler", "grid", "shift", "temperature", "steps", "calls"]
    fields += ["psnr_y", "ssim_y", "hf_ratio", "seconds"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for m in measurements:
            writer.writerow(
                {"image": m.stem}
                | _setting_fields(m.setting, m.calls)
                | {
                    "psnr_y": _fmt(m.psnr_y, 4),
                    "ssim_y": _fmt(m.ssim_y, 5),
                    "hf_ratio": _fmt(m.hf_ratio, 4),
                    "seconds": _fmt(m.seconds, 3),
                }
            )


def _md_row(s: Summary, extra: list[str] | None = None) -> str:
    cells = [str(s.calls), f"`{s.label}`", _fmt(s.psnr_y, 3), _fmt(s.ssim_y, 4)]
    cells += [_fmt(s.hf_ratio, 3)] + (extra or [])
    return "| " + " | ".join(cells) + " |"


def _md_table(rows: list[Summary], extra_header: list[str] | None = None, extras=None) -> list[str]:
    header = ["calls", "setting", "Y-PSNR (dB)", "Y-SSIM", "HF ratio"] + (extra_header or [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, s in enumerate(rows):
        lines.append(_md_row(s, extras[i] if extras else None))
    return lines


def _hardware(backend, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    used = threads if threads > 0 else os.cpu_count()
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs; backend {getattr(backend, 'name', backend)}, "
        f"ONNX Runtime {onnxruntime.__version__}, {used} CPU thread{'s' if used != 1 else ''}"
    )


def write_markdown(
    path: Path,
    summaries: list[Summary],
    frontiers: dict[int, list[Summary]],
    context: dict,
) -> None:
    """Write the sweep report: setup, best per call count, PSNR check, frontiers, all rows."""
    settings = [s for s in summaries if s.setting is not None]
    max_calls = max(s.calls for s in settings)
    best_overall = max(settings, key=lambda s: s.psnr_y)
    bicubic = next((s for s in summaries if s.setting is None), None)
    info: ModelInfo = context["info"]

    lines = [
        "# Sampler sweep: image quality per network call",
        "",
        f"- Command: `{context['command']}`",
        f"- Model: `{context['model']}`, training step {info.training_step}, ONNX sha256 "
        f"`{info.onnx_sha256[:16]}`, target {info.target}, prediction {info.prediction}",
        f"- Images: {context['images']} LR/HR pairs, noise seed {context['seed']}",
        f"- Hardware: {context['hardware']}; the sweep took {context['minutes']:.1f} min",
        "",
        "`steps` counts intervals of the time grid on [0, 1], as `fmsr-infer --steps` does, and "
        "`calls` is the number of network evaluations per image. Y-PSNR and Y-SSIM are "
        f"computed on 8-bit outputs, BT.601 luma, {info.scale} pixels cropped at each side, "
        "averaged over images. The HF ratio is the energy of the Hann-windowed luma above "
        f"the LR Nyquist frequency (max(|f_x|, |f_y|) > 1/{2 * info.scale} cycles per "
        "pixel) of the output divided by that of the HR: 1 is the HR's detail energy, "
        "below 1 is blur. The frontier keeps the settings that no other setting beats in "
        "both Y-PSNR and |log2 HF ratio|. Settings that sample identically are listed "
        "once: at 1 step every grid is [0, 1] and heun_euler_last is Euler.",
        "",
    ]
    if bicubic is not None:
        lines += [
            f"Bicubic upsample: Y-PSNR {bicubic.psnr_y:.3f} dB, Y-SSIM {bicubic.ssim_y:.4f}, "
            f"HF ratio {bicubic.hf_ratio:.3f}.",
            "",
        ]

    # Best PSNR per call count, with the gap to the best of the whole sweep.
    best = best_psnr_by_calls(summaries)
    lines += ["## Best Y-PSNR at each number of network calls", ""]
    gaps = [[_fmt(best_overall.psnr_y - s.psnr_y, 3)] for s in best.values()]
    lines += _md_table(list(best.values()), ["below best (dB)"], gaps) + [""]

    # Calls needed to come within the tolerance of the best PSNR, per temperature.
    lines += [
        f"## Fewest calls within {PSNR_TOLERANCE_DB} dB of the best Y-PSNR",
        "",
        f"The best Y-PSNR of the sweep (at most {max_calls} calls) is "
        f"{best_overall.psnr_y:.3f} dB, "
        f"from `{best_overall.label}`.",
        "",
        "| temperature | fewest calls | setting | Y-PSNR (dB) | below best (dB) |",
        "|---|---|---|---|---|",
    ]
    temperatures = sorted({s.setting.temperature for s in settings})
    for temperature in temperatures:
        within = [
            s
            for s in best_psnr_by_calls(summaries, temperature).values()
            if best_overall.psnr_y - s.psnr_y <= PSNR_TOLERANCE_DB
        ]
        if within:
            s = within[0]
            lines.append(
                f"| {temperature:g} | {s.calls} | `{s.label}` | {s.psnr_y:.3f} | "
                f"{best_overall.psnr_y - s.psnr_y:.3f} |"
            )
        else:
            lines.append(f"| {temperature:g} | none | | | |")
    lines.append("")

    for calls, frontier in frontiers.items():
        lines += [f"## Frontier of Y-PSNR and HF ratio with at most {calls} calls", ""]
        lines += _md_table(frontier) + [""]

    lines += ["## All settings", ""]
    lines += _md_table(summaries) + [""]
    path.write_text("\n".join(lines))


# ---------------------------------------------------------------------------------------
# Plot


def import_pyplot():
    """Import matplotlib's pyplot with the file-only Agg backend, or raise ClickException."""
    try:
        import matplotlib
    except ImportError:
        raise click.ClickException(
            "the plot needs matplotlib, which is not installed: pip install matplotlib, "
            "or pass --no-plot to write the tables only"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plot(
    path: Path, summaries: list[Summary], frontier_calls: int, title: str
) -> None:
    """Plot Y-PSNR, Y-SSIM and HF ratio against calls per temperature, and the frontier.

    The frontier (over all temperatures, at most `frontier_calls` calls) is drawn in
    black in the last column of every row, over dots for the settings of that row.
    """
    plt = import_pyplot()
    from matplotlib.lines import Line2D

    settings = [s for s in summaries if s.setting is not None]
    bicubic = next((s for s in summaries if s.setting is None), None)
    temperatures = sorted({s.setting.temperature for s in settings})
    samplers = list(dict.fromkeys(s.setting.sampler for s in settings))
    grids = list(dict.fromkeys(s.setting.grid for s in settings))
    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(samplers)}
    styles = {grid: ("-", "--", ":", "-.")[i % 4] for i, grid in enumerate(grids)}
    metrics = [("psnr_y", "Y-PSNR (dB)"), ("ssim_y", "Y-SSIM"), ("hf_ratio", "HF ratio")]

    fig, axes = plt.subplots(
        len(temperatures), 4, figsize=(20, 4 * len(temperatures)), squeeze=False
    )
    frontier = pareto_frontier(summaries, frontier_calls)
    frontier_ids = {id(s) for s in frontier}
    for row, temperature in enumerate(temperatures):
        at_temperature = [s for s in settings if s.setting.temperature == temperature]

        # Metrics against network calls, one line per sampler and grid.
        for col, (field, name) in enumerate(metrics):
            ax = axes[row, col]
            for sampler in samplers:
                for grid in grids:
                    series = [
                        s
                        for s in at_temperature
                        if s.setting.sampler == sampler and s.setting.grid == grid
                    ]
                    if not series:
                        continue
                    ax.plot(
                        [s.calls for s in series],
                        [getattr(s, field) for s in series],
                        linestyle=styles[grid],
                        color=colors[sampler],
                        marker=".",
                    )
            if bicubic is not None:
                ax.axhline(getattr(bicubic, field), color="gray", linewidth=0.8, linestyle="--")
            if field == "hf_ratio":
                ax.axhline(1.0, color="black", linewidth=0.8)
                ax.set_yscale("log", base=2)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_xlabel("network calls")
            ax.set_ylabel(name)
            ax.set_title(f"{name}, temperature {temperature:g}")
            ax.grid(alpha=0.3)

        # PSNR against sharpness, with the frontier over all temperatures.
        ax = axes[row, 3]
        for s in at_temperature:
            on_frontier = id(s) in frontier_ids
            ax.scatter(
                s.hf_ratio,
                s.psnr_y,
                color=colors[s.setting.sampler],
                s=12 + 2 * s.calls,
                alpha=1.0 if on_frontier else 0.45,
                edgecolors="black" if on_frontier else "none",
            )
        # The frontier in the order of falling PSNR, which is rising sharpness.
        ax.plot([s.hf_ratio for s in frontier], [s.psnr_y for s in frontier], color="black")
        ax.set_xscale("log", base=2)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("HF ratio (log scale, 1 = HR)")
        ax.set_ylabel("Y-PSNR (dB)")
        ax.set_title(f"Y-PSNR vs HF ratio, temperature {temperature:g}")
        ax.grid(alpha=0.3)

    handles = [Line2D([], [], color=colors[name], label=name) for name in samplers]
    handles += [
        Line2D([], [], color="black", linestyle=styles[grid], label=grid.label) for grid in grids
    ]
    handles.append(Line2D([], [], color="gray", linestyle="--", label="bicubic"))
    handles.append(
        Line2D(
            [], [], color="black", marker="o",
            label=f"frontier over all temperatures, at most {frontier_calls} calls",
        )
    )
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False)
    fig.suptitle(title, y=1.0 - 0.35 / (4 * len(temperatures)))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / (4 * len(temperatures))))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# Command


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("lr_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--hr", "hr_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of HR images: {stem}.png for each LR {stem}x4.png or {stem}.png.",
)
@click.option(
    "--model", "model_path", type=click.Path(path_type=Path), default=None,
    help="ONNX model from fmsr-export (its .json beside it). Default: the bundled model.",
)
@click.option(
    "-o", "--output", "output_dir", type=click.Path(file_okay=False, path_type=Path),
    default=Path("sweep"), show_default=True, help="Folder for the tables and the plot.",
)
@click.option(
    "--samplers", default=",".join(SAMPLERS), show_default=True, callback=_parse_samplers,
    help="Comma-separated samplers to sweep.",
)
@click.option(
    "--grids", default=DEFAULT_GRIDS, show_default=True, callback=_parse_grids,
    help="Comma-separated time grids: uniform, image_end, shifted (shift 3) or shifted:S.",
)
@click.option(
    "--temperatures", default=DEFAULT_TEMPERATURES, show_default=True,
    callback=_parse_temperatures, help="Comma-separated noise temperatures in [0, 2].",
)
@click.option(
    "--max-calls", type=click.IntRange(1, 256), default=16, show_default=True,
    help="Largest number of network calls per image; each sampler runs every step count "
    "that stays within it.",
)
@click.option(
    "--frontier-calls", type=click.IntRange(1, 256), default=8, show_default=True,
    help="Call budget of the frontier reported besides the one at --max-calls.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise field.")
@click.option(
    "--max-images", type=click.IntRange(0), default=0, show_default=True,
    help="Use only the first N pairs, sorted by LR name. 0 uses all.",
)
@click.option(
    "--backend", "backend_name", type=click.Choice(BACKENDS), default="auto", show_default=True,
    help="Network backend. auto picks the fastest that loads.",
)
@click.option("--threads", type=int, default=0, show_default=True, help="CPU threads, 0 for all.")
@click.option("--no-plot", is_flag=True, help="Write the tables only (no matplotlib needed).")
@click.option("--quiet", is_flag=True, help="Hide the progress bar and log errors only.")
def main(
    lr_dir, hr_dir, model_path, output_dir, samplers, grids, temperatures, max_calls,
    frontier_calls, seed, max_images, backend_name, threads, no_plot, quiet,
):
    """Sweep samplers, time grids, temperatures and 1 to --max-calls network calls.

    Super-resolves every LR image in LR_DIR with every setting and scores it against
    its HR with Y-PSNR, Y-SSIM and the high-frequency ratio, then writes sweep.csv,
    sweep_per_image.csv, sweep.md and sweep.png to the output folder.
    """
    logging.basicConfig(
        level=logging.ERROR if quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    if not no_plot:
        import_pyplot()
    from fmsr_infer.backends import create_backend
    from fmsr_infer.pipeline import Upscaler

    model_path = model_path or DEFAULT_MODEL
    try:
        info = load_info(model_path)
        backend = create_backend(backend_name, model_path, info, threads=threads)
        pairs = pair_images(lr_dir, hr_dir, info.scale)
    except ValueError as exc:  # ModelError is a ValueError
        hint = ""
        if isinstance(exc, ModelError) and model_path == DEFAULT_MODEL:
            hint = " (pass --model)"
        click.echo(f"fmsr-eval: error: {exc}{hint}", err=True)
        sys.exit(2)
    if max_images:
        pairs = pairs[:max_images]

    settings = sweep_settings(samplers, grids, temperatures, max_calls)
    if not settings:
        cheapest = min(samplers, key=lambda name: network_calls(name, 1))
        needed = network_calls(cheapest, 1)
        click.echo(
            f"fmsr-eval: error: no setting fits --max-calls {max_calls}: the cheapest chosen "
            f"sampler, {cheapest}, makes {needed} network calls at 1 step; raise "
            f"--max-calls to {needed} or add a cheaper sampler",
            err=True,
        )
        sys.exit(2)
    for temperature in temperatures:
        if info.temperature_trained(temperature) is False:
            log.warning(
                "temperature %g is outside this model's training, which saw %s; its rows "
                "show the model off its training distribution",
                temperature, info.describe_trained_temperatures(),
            )
    calls_per_image = sum(s.calls for s in settings)
    log.info(
        "sweeping %d settings on %d images: %d network calls per image",
        len(settings), len(pairs), calls_per_image,
    )

    start = time.perf_counter()
    upscaler = Upscaler(backend, info)
    with click.progressbar(
        length=calls_per_image * len(pairs), label="fmsr-eval network calls",
        hidden=quiet, file=sys.stderr,
    ) as bar:
        try:
            measurements = run_sweep(upscaler, pairs, settings, seed, on_progress=bar.update)
        except (OSError, ValueError) as exc:
            click.echo(f"\nfmsr-eval: error: {exc}", err=True)
            sys.exit(1)
    minutes = (time.perf_counter() - start) / 60

    # Tables and plot.
    summaries = summarize(measurements)
    budgets = sorted({min(frontier_calls, max_calls), max_calls})
    frontiers = {calls: pareto_frontier(summaries, calls) for calls in budgets}
    output_dir.mkdir(parents=True, exist_ok=True)
    context = {
        "command": shlex.join(["fmsr-eval", *sys.argv[1:]]),
        "model": model_path,
        "info": info,
        "images": len(pairs),
        "seed": seed,
        "hardware": _hardware(backend, threads),
        "minutes": minutes,
    }
    write_summary_csv(output_dir / "sweep.csv", summaries, frontiers)
    write_per_image_csv(output_dir / "sweep_per_image.csv", measurements)
    write_markdown(output_dir / "sweep.md", summaries, frontiers, context)
    if not no_plot:
        title = f"{model_path.name}: {len(pairs)} images, seed {seed}"
        write_plot(output_dir / "sweep.png", summaries, budgets[0], title)

    best = max((s for s in summaries if s.setting is not None), key=lambda s: s.psnr_y)
    images = f"{len(pairs)} image" + ("s" if len(pairs) != 1 else "")
    click.echo(
        f"{len(settings)} settings on {images} in {minutes:.1f} min; best Y-PSNR "
        f"{best.psnr_y:.3f} dB from {best.label} ({best.calls} network calls per image); "
        f"{len(frontiers[budgets[0]])} settings on the frontier at {budgets[0]} calls; "
        f"outputs in {output_dir}",
        err=quiet,
    )


if __name__ == "__main__":
    main()
