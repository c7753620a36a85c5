"""fmsr-bench --quick: the files it writes, what it measures and the rows it cannot run."""

import importlib.util
import json

import pytest
import torch

from conftest import run_cli

CPU_BACKENDS = ("eager-fp32", "eager-channels-last", "fmsr-ort-cpu", "prototype-ort-fixed-t")
GPU_BACKENDS = (
    "eager-cuda-fp32",
    "eager-cuda-fp16-autocast",
    "eager-cuda-graph",
    "fmsr-ort-cuda",
    "fmsr-tensorrt-fp16",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Run fmsr-bench --quick once; returns (output folder, parsed JSON)."""
    out = tmp_path_factory.mktemp("bench")
    run_cli("fmsr-bench", "--quick", "--out-dir", str(out), "--doc", str(out / "doc.md"))
    paths = list(out.glob("*-quick.json"))
    assert len(paths) == 1, f"expected one *-quick.json in {out}, found {paths}"
    return out, json.loads(paths[0].read_text())


@pytest.mark.slow
def test_quick_writes_json_markdown_plot(quick_run):
    out, results = quick_run
    assert results["format"] == "fmsr-bench-1"
    assert results["run"]["quick"] is True
    stem = results["outputs"]["json"].removesuffix(".json")
    markdown = (out / f"{stem}.md").read_text()
    assert "## End to end" in markdown
    assert "## Memory" in markdown
    for name in CPU_BACKENDS:
        assert name in markdown
    # --doc in the same folder links the plot by the same relative path.
    assert (out / "doc.md").read_text() == markdown
    if importlib.util.find_spec("matplotlib") is None:
        assert results["outputs"]["plot"] is None
        assert "matplotlib" in results["outputs"]["plot_error"]
    else:
        png = out / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_rows_not_run_give_reasons(quick_run):
    _, results = quick_run
    for entry in results["backends"]:
        if entry["status"] != "ok":
            assert entry["reason"], f"backend {entry['name']} is {entry['status']} without a reason"
    for table in ("network", "end_to_end", "memory"):
        for row in results[table]:
            if row["status"] != "ok":
                assert row["reason"], f"{table} row {row} has no reason"

    status = {entry["name"]: entry for entry in results["backends"]}
    assert status["torch-compile"]["status"] == "unavailable"
    assert "--quick" in status["torch-compile"]["reason"]
    if not torch.cuda.is_available():
        for name in GPU_BACKENDS:
            assert status[name]["status"] == "unavailable"
            assert "CUDA" in status[name]["reason"]


@pytest.mark.slow
def test_quick_measures_cpu_backends(quick_run):
    _, results = quick_run
    sizes = results["run"]["sizes"]
    for name in CPU_BACKENDS:
        for lr_size in sizes:
            network = [r for r in results["network"] if r["backend"] == name
                       and r["lr_size"] == lr_size]
            assert len(network) == 1
            assert network[0]["status"] == "ok", network[0]
            assert network[0]["median_s"] > 0
            assert network[0]["flops"] > 0
            cells = [r for r in results["end_to_end"] if r["backend"] == name
                     and r["lr_size"] == lr_size]
            assert len(cells) == len(results["run"]["steps"]) * len(results["run"]["samplers"])
            for cell in cells:
                assert cell["status"] == "ok", cell
                assert cell["runs"] == results["run"]["repeats"]
                assert cell["measured_calls"] == cell["network_calls"]
                assert cell["median_s"] >= cell["network_median_s"] > 0
                if name != "eager-fp32":
                    assert cell["parity_ok"] is True, cell


@pytest.mark.slow
def test_quick_memory_probes_runtime_without_torch(quick_run):
    _, results = quick_run
    runtime = [r for r in results["memory"] if r["kind"] == "runtime"]
    assert {(r["lr_size"], r["tile"] > 0) for r in runtime} == {
        (lr_size, tiled) for lr_size in results["run"]["sizes"] for tiled in (False, True)
    }
    for row in runtime:
        assert row["status"] == "ok", row
        assert row["run_peak_mb"] > 0
        assert row["torch_imported"] is False


def test_bench_rejects_bad_sizes():
    proc = run_cli("fmsr-bench", "--quick", "--sizes", "0", check=False)
    assert proc.returncode == 2
    assert "--sizes" in proc.stderr


class FailingBackend:
    """A backend whose per-size preparation raises, as a broken torch.compile would."""

    name = "failing"
    device = "cpu"
    description = "raises in prepare"

    def setup(self):
        pass

    def prepare(self, height, width):
        raise RuntimeError(f"cannot prepare {height}x{width}")

    def details(self):
        return {}


def tiny_bench_model():
    from benchmarks.models import BenchModel
    from fmsr_infer.model_info import INPUT_NAMES, METADATA_FORMAT, ModelInfo
    from fmsr_train.model import ModelConfig, UNetSR

    config = ModelConfig(base_channels=4, blocks_per_scale=1, time_dim=8)
    torch.manual_seed(0)
    model = UNetSR(config).eval()
    info = ModelInfo(
        format=METADATA_FORMAT, scale=4, size_multiple=4, value_range=[-1.0, 1.0],
        input_names=list(INPUT_NAMES), output_name="x1", target="residual",
        prediction="x1", residual_scale=4.0, t_floor=0.05, sampler_default="euler",
        steps_default=8, temperature_default=0.0, precision="fp32", training_step=0,
        checkpoint_sha256="", onnx_sha256="", parity_max_abs_error=0.0,
    )
    return BenchModel(None, info, "tiny test model", model, None)


def test_runner_failing_backend_gives_reasons():
    from benchmarks.backends import BASELINE, TorchBackend
    from benchmarks.runner import BenchConfig, Runner

    model = tiny_bench_model()
    backends = [TorchBackend(BASELINE, model, "eager"), FailingBackend()]
    config = BenchConfig(
        sizes=(4, 8), steps=(1,), samplers=("euler", "heun"), repeats=2, network_min_runs=2,
        network_min_seconds=0.0, network_max_runs=2, cell_budget_s=1e9, seed=0,
        temperature=1.0, threads=1, memory_sizes=(), memory_tile=0,
    )
    results = Runner(config, model, backends).run()

    status = {entry["name"]: entry for entry in results["backends"]}
    assert status[BASELINE]["status"] == "ok"
    assert status["failing"]["status"] == "failed"
    assert "cannot prepare 16x16" in status["failing"]["reason"]
    failing_network = [r for r in results["network"] if r["backend"] == "failing"]
    failing_e2e = [r for r in results["end_to_end"] if r["backend"] == "failing"]
    assert len(failing_network) == 2
    assert len(failing_e2e) == 4
    for row in failing_network + failing_e2e:
        assert row["status"] == "failed"
        assert row["reason"]
    baseline_e2e = [r for r in results["end_to_end"] if r["backend"] == BASELINE]
    assert [r["status"] for r in baseline_e2e] == ["ok"] * 4


def test_runner_skips_cells_over_budget():
    from benchmarks.backends import BASELINE, TorchBackend
    from benchmarks.runner import BenchConfig, Runner

    model = tiny_bench_model()
    config = BenchConfig(
        sizes=(4,), steps=(1, 8), samplers=("euler", "heun"), repeats=2, network_min_runs=2,
        network_min_seconds=0.0, network_max_runs=2, cell_budget_s=0.0, seed=0,
        temperature=1.0, threads=1, memory_sizes=(), memory_tile=0,
    )
    results = Runner(config, model, [TorchBackend(BASELINE, model, "eager")]).run()

    cells = {(r["sampler"], r["steps"]): r for r in results["end_to_end"]}
    assert cells[("euler", 8)]["status"] == "ok"  # a target cell runs whatever the budget
    for key in (("euler", 1), ("heun", 1), ("heun", 8)):
        assert cells[key]["status"] == "skipped"
        assert "--cell-budget" in cells[key]["reason"]
