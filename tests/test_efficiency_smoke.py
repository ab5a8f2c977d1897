"""evals/efficiency.py --quick end to end on a tiny random Llama: the JSON report and the
markdown table have every part the issue asks for. No timing is asserted: the numbers of a
tiny model on a shared machine mean nothing. Then, without a model: how targets are judged
and turned into the exit code, and where the combination step is timed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    {"index": 0, "question": "Why is the sky blue?"},
    {"index": 1, "question": "Write a haiku about a long road through the hills after rain."},
    {"index": 2, "question": "Hi"},
]
METHOD_KEYS = {
    "base", "pref", "beam", "la", "amulet:T=0:closed_form", "amulet:T=2:closed_form",
    "amulet:T=0:iterative", "amulet:T=2:iterative", "hf_cfg:batched", "hf_cfg:per_prompt",
}
ROW_KEYS = {"method", "setting", "generated_tokens", "wall_seconds", "wall_seconds_median",
            "cpu_seconds_median", "seconds_per_token", "tokens_per_second", "memory"}


def run_quick(model_dir: Path, root: Path, *flags: str) -> tuple[dict, str, Path]:
    (root / "three.json").write_text(json.dumps(QUESTIONS))
    out = root / "bench" / "efficiency.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMULET_DATA")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "evals" / "efficiency.py"), "--quick",
         "--model_name", str(model_dir), "--data_dir", str(root),
         "--eval_data", "three", "--out", str(out), *flags],
        capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout, out


@pytest.fixture(scope="module")
def quick_run(tiny_model_dirs, tmp_path_factory) -> tuple[dict, str, Path]:
    return run_quick(tiny_model_dirs["llama"], tmp_path_factory.mktemp("efficiency"))


def test_quick_run_reports_every_method_with_tokens_time_and_throughput(quick_run):
    report, _, _ = quick_run
    assert set(report["methods"]) == METHOD_KEYS
    for key, row in report["methods"].items():
        assert ROW_KEYS <= set(row), key
        assert row["generated_tokens"] > 0, key
        assert row["tokens_per_second"] > 0 and row["seconds_per_token"] > 0, key
        assert len(row["wall_seconds"]) == report["settings"]["repeats"] == 1


def test_quick_run_measures_memory_of_pref_and_amulet(quick_run):
    report, _, _ = quick_run
    if report["memory_method"] == "not measured":
        pytest.skip("no way to measure peak memory on this platform")
    for key in ("pref", "amulet:T=2:closed_form"):
        memory = report["methods"][key]["memory"]
        assert memory["peak_rss_mb"] > 0 and memory["peak_above_loaded_mb"] >= 0, key


def test_quick_run_times_both_solvers_on_a_fixed_shape(quick_run):
    report, _, _ = quick_run
    rows = report["solver_cost"].values()
    assert {(r["iteration_num"], r["solver"]) for r in rows} == {
        (t, s) for t in (0, 2) for s in ("closed_form", "iterative")}
    assert all(0 < r["seconds_per_step"] <= r["seconds_per_step_median"] for r in rows)


def test_quick_run_times_the_combination_step_alone(quick_run):
    report, _, _ = quick_run
    rows = report["combine_step"]
    assert {(r["iteration_num"], r["solver"]) for r in rows} == {
        (t, s) for t in (0, 2) for s in ("closed_form", "iterative")}
    assert all(r["ms_per_call"] > 0 and r["vocab"] > 0 for r in rows)


def test_quick_run_sweeps_batch_sizes_for_pref_and_amulet(quick_run):
    report, _, _ = quick_run
    got = {(r["method"], r["batch_size"]) for r in report["batch_sweep"]}
    assert got == {(m, b) for m in ("pref", "amulet") for b in (1, 2)}


DATASET_ROWS = [("pref", "model.generate, fixed batches"),
                ("amulet", "engine, continuous batching"), ("amulet", "engine, fixed batches")]


def check_dataset_part(report: dict, text: str) -> None:
    data = report["dataset"]
    assert data["questions"] == len(QUESTIONS) and data["batch_size"] == 2
    assert [(r["method"], r["decoding"]) for r in data["rows"]] == DATASET_ROWS
    tokens = {r["generated_tokens"] for r in data["rows"]}
    assert all(0 < t <= len(QUESTIONS) * 4 for t in tokens)  # --quick: 4 new tokens each
    assert all(r["wall_seconds_median"] > 0 and r["tokens_per_second"] > 0
               for r in data["rows"])
    # fp32 greedy: which questions share a batch does not change Amulet's tokens
    assert data["identical_continuous_vs_fixed"] == f"{len(QUESTIONS)}/{len(QUESTIONS)}"
    target = next(t for t in report["targets"] if "over the dataset" in t["target"])
    assert target["measured"] == pytest.approx(
        data["rows"][1]["tokens_per_second"] / data["rows"][0]["tokens_per_second"])
    assert target["threshold"] == ">= 0.65" and target["holds"] is None
    assert "| method | setting | decoded by | tokens | wall s | tokens / s | vs pref |" in text
    assert text.count("| engine, ") == 2


def test_quick_run_decodes_the_dataset_with_generate_and_the_engine(quick_run):
    report, stdout, _ = quick_run
    check_dataset_part(report, stdout)


def test_only_dataset_runs_the_dataset_part_alone(tiny_model_dirs, tmp_path):
    report, stdout, _ = run_quick(tiny_model_dirs["llama"], tmp_path, "--only", "dataset")
    check_dataset_part(report, stdout)
    assert report["methods"] == {} and report["solver_cost"] == {}
    assert report["combine_step"] == [] and report["batch_sweep"] == []
    assert report["memory_method"] == "not measured"
    measured = [t["target"] for t in report["targets"] if t["measured"] is not None]
    assert measured == ["amulet / pref tokens/s over the dataset"]


@pytest.mark.parametrize("flags", [["--only", "datasets"], ["--skip", "dataset,foo"]])
def test_unknown_parts_are_refused(flags):
    from evals.bench.efficiency_cli import parse_args
    from evals.errors import EvalError

    with pytest.raises(EvalError, match="unknown --(only|skip) part"):
        parse_args(flags)


def test_quick_run_records_machine_and_versions(quick_run):
    report, _, _ = quick_run
    env = report["environment"]
    for key in ("cpu", "torch_threads", "model", "dtype", "torch", "transformers", "python"):
        assert env[key] not in (None, ""), key
    assert env["dtype"] == "float32" and env["torch_threads"] == 1


def test_quick_run_measures_every_target_but_judges_none(quick_run):
    report, stdout, _ = quick_run
    assert len(report["targets"]) == 8 and report["targets_judged"] is False
    memory_measured = report["memory_method"] != "not measured"
    for target in report["targets"]:
        assert target["holds"] is None, target
        if memory_measured or "memory" not in target["target"]:
            assert target["measured"] is not None, target
    assert "targets not judged in --quick mode" in stdout.lower()
    assert "| holds |" not in stdout and "| yes |" not in stdout and "| NO |" not in stdout


def test_quick_run_prints_and_writes_the_same_markdown_tables(quick_run):
    report, stdout, out = quick_run
    written = out.with_suffix(".md").read_text()
    assert written == stdout.rstrip("\n") + "\n"
    for header in ("| method | setting | tokens |", "| T | solver | s / step, fastest |",
                   "| T | solver | ms / call |",
                   "| batch size | pref tokens / s |", "| method | setting | decoded by |",
                   "| target | measured | threshold |"):
        assert header in written
    method_rows = [ln for ln in written.splitlines() if ln.startswith("| ")
                   and ln.split("|")[1].strip() in {"base", "pref", "beam", "la", "amulet",
                                                    "hf_cfg"}]
    assert len(method_rows) == len(report["methods"]) + len(report["dataset"]["rows"])


def test_quick_run_times_the_library_paths_each_with_its_engine_tokens(quick_run):
    report, stdout, _ = quick_run
    rows = {row["path"]: row for row in report["library"]}
    assert len(rows) == 11 and all(row["tokens_per_s"] > 0 for row in rows.values())
    for path in ("AmuletProcessor in generate", "ArgsProcessor in generate",
                 "PadProcessor in generate"):
        assert rows[path]["same_tokens"] == "2/2", path
    assert "Library paths" in stdout and "| ArgsProcessor in generate |" in stdout


def test_bad_arguments_fail_in_one_line_before_loading_and_leave_no_folder(tmp_path):
    """Started in a folder with the default --out (benchmarks/...): a run that stops on its
    input creates no benchmarks/ folder there."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "evals" / "efficiency.py"), "--data_dir", str(tmp_path),
         "--eval_data", "missing"],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "missing" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_report_folder_that_cannot_be_made_is_refused_before_loading(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = subprocess.run(
        [sys.executable, str(ROOT / "evals" / "efficiency.py"), "--out",
         str(blocker / "sub" / "e.json")],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"error: cannot write the report into {blocker}/sub/: "
                                        f"{blocker} is not a writable folder (choose another "
                                        "--out)"]


# ---------------------------------------------------------------- targets and the exit code

TARGET_ARGS = argparse.Namespace(iteration_num=2, cost_T=[0, 2])


def measurements(amulet_tps: float) -> tuple[dict, dict, dict]:
    """Results, fixed-shape cost and memory in the shapes run() passes to check_targets."""
    amulet = "amulet:T=2:closed_form"
    results = {"pref": {"tokens_per_second": 10.0}, amulet: {"tokens_per_second": amulet_tps}}
    cost = {f"amulet:T={t}:{s}:fixed": {"seconds_per_step": 1.0}
            for t in (0, 2) for s in ("closed_form", "iterative")}
    memory = {k: {"peak_above_loaded_mb": 10.0, "peak_rss_mb": 100.0} for k in ("pref", amulet)}
    return results, cost, memory


def test_a_full_run_judges_each_measured_target_and_leaves_missing_ones_open():
    from evals.bench.efficiency_report import check_targets

    targets = check_targets(TARGET_ARGS, *measurements(amulet_tps=4.0), judge=True)
    holds = {t["target"]: t["holds"] for t in targets}
    assert holds["amulet tokens/s / pref tokens/s"] is False  # 0.4 < 0.5
    assert holds["amulet tokens/s / HF CFG (batched) tokens/s"] is None  # CFG not timed
    assert holds["amulet / pref peak process memory"] is True


def test_quick_mode_measures_targets_without_judging_them():
    from evals.bench.efficiency_report import check_targets

    targets = check_targets(TARGET_ARGS, *measurements(amulet_tps=4.0), judge=False)
    assert all(t["holds"] is None for t in targets)
    assert targets[0]["measured"] == pytest.approx(0.4)


@pytest.mark.parametrize(("amulet_tps", "code"), [(4.0, 1), (6.0, 0)])
def test_main_exits_1_when_a_judged_target_fails(monkeypatch, capsys, tmp_path, amulet_tps,
                                                  code):
    import evals.bench.efficiency_cli as efficiency
    from evals.bench.efficiency_report import check_targets

    def fake_run(args):
        return {"targets": check_targets(args, *measurements(amulet_tps), judge=not args.quick)}

    monkeypatch.setattr(efficiency, "run", fake_run)
    flags = ["--out", str(tmp_path / "e.json"), "--iteration_num", "2", "--cost_T", "0,2"]
    assert efficiency.main(flags) == code
    assert efficiency.main([*flags, "--quick"]) == 0  # a smoke run judges nothing
    err = capsys.readouterr().err.strip().splitlines()
    if code:
        assert err == ["1 of 7 targets failed: amulet tokens/s / pref tokens/s = 0.400, "
                       "needs >= 0.5"]
    else:
        assert err == []


# ---------------------------------------------------------------- the combination step's clock


class MetaModel:
    """Weights on the meta device: no data, but a device that is not the CPU, as a GPU is."""

    def __init__(self, vocab: int):
        import torch

        self.embed = SimpleNamespace(weight=torch.empty(vocab, 4, device="meta"))  # (V, H)
        self.head = SimpleNamespace(weight=torch.empty(vocab, 4, device="meta"))  # (V, H)

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.head


def test_combine_step_is_timed_on_the_models_device_between_synchronisations(monkeypatch):
    import torch

    import DecodingMethodsModels.rules.combine as combine
    from evals.bench.efficiency_timing import combine_step_cost

    events: list = []

    class AnyDeviceGenerator(torch.Generator):
        """Records the device asked for; a CPU generator serves, as meta tensors draw none."""

        def __new__(cls, device="cpu"):
            events.append(("generator", torch.device(device)))
            return super().__new__(cls)

        def __init__(self, device="cpu"):
            pass

    def recording_rule(t, alpha, player_lambda, eta, solver):
        return lambda pref, base: events.append(("rule", pref.device, base.device))

    def synchronizer(device):
        events.append(("synchronizer", device))
        return lambda: events.append("sync")

    model = MetaModel(vocab=11)
    monkeypatch.setattr(torch, "Generator", AnyDeviceGenerator)
    monkeypatch.setattr(combine, "amulet_rule", recording_rule)
    args = argparse.Namespace(batch_size=3, cost_T=[0, 2], alpha=2.0, player_lambda=2.0,
                              eta=10.0)
    rows = combine_step_cost(args, model, SimpleNamespace(pref_ids=[[1]] * 5), repeats=2,
                             synchronizer=synchronizer)
    meta = torch.device("meta")
    assert events[:2] == [("synchronizer", meta), ("generator", meta)]
    call = ("rule", meta, meta)
    per_setting = [call] + ["sync", call, "sync"] * 2  # warm-up, then each timed call
    assert events[2:] == per_setting * 4  # 2 T x 2 solvers
    assert [(r["rows"], r["vocab"]) for r in rows] == [(3, 11)] * 4


def test_device_synchronizer_waits_for_cuda_and_not_for_the_cpu(monkeypatch):
    import torch

    from evals.bench.efficiency_timing import device_synchronizer

    waited: list = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    device_synchronizer(torch.device("cpu"))()
    assert waited == []
    device_synchronizer(torch.device("cuda:1"))()
    assert waited == [torch.device("cuda:1")]
