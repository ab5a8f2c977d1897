"""Data parallel over CPU processes (torchrun, gloo): the same bytes as one process, each rank
its own resumable shard, a rank killed mid-way loses nothing and duplicates nothing on rerun.
Plus the pure parts: launcher variables, batch ownership, GPU slices per rank."""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest
from cli_helpers import (
    QUESTIONS,
    ROOT,
    batch_lines,
    finish,
    gen_args,
    run_cmd,
    run_files,
    start,
    torchrun_cmd,
    wait_for_batches,
)

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.pipeline import distributed
from DecodingMethodsModels.pipeline.distributed import Process, launched_process, restrict_gpus


def test_two_cpu_processes_write_the_single_process_file(model, data, reference, tmp_path):
    final, directory = run_files(tmp_path, model)
    done = run_cmd(torchrun_cmd(2, gen_args(model, data, tmp_path)))
    assert done.returncode == 0, done.stderr
    assert final.read_bytes() == reference
    assert sorted(p.name for p in directory.iterdir()) == ["amulet.json", "amulet.meta.json"]
    meta = json.loads((directory / "amulet.meta.json").read_text())
    assert meta["environment"]["world_size"] == 2
    # rank 0 alone speaks: its start line, and a progress line per batch of its share (no
    # terminal here), 3 of the 6 batches of 2 questions
    assert done.stderr.count("wrote ") == 1 and done.stderr.count("questions to decode") == 1
    progress = [line for line in done.stderr.splitlines() if " questions, " in line]
    assert [line.split(": ")[1].split(" ")[0] for line in progress] == ["2/6", "4/6", "6/6"]
    assert all(line.startswith("[1/1] amulet creative demo (rank 0's share of 2): ")
               for line in progress), progress


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_accelerate_launch_writes_the_single_process_file(model, data, reference, tmp_path):
    # on a machine without GPUs, --multi_gpu only picks accelerate's multi-process launcher
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(ROOT / "main.py"),
           *gen_args(model, data, tmp_path)]
    done = run_cmd(cmd)
    assert done.returncode == 0, done.stderr
    final, directory = run_files(tmp_path, model)
    assert final.read_bytes() == reference
    assert json.loads((directory / "amulet.meta.json").read_text())["environment"][
        "world_size"] == 2


def rank_pid(launcher: psutil.Process, rank: int) -> psutil.Process:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for child in launcher.children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank):
                    return child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.05)
    raise AssertionError(f"no worker with RANK={rank}")


def test_a_rank_killed_midway_then_rerun_loses_and_duplicates_nothing(
    model, data, reference, tmp_path
):
    args = gen_args(model, data, tmp_path)
    final, directory = run_files(tmp_path, model)
    job = start(torchrun_cmd(2, args))
    rank1 = rank_pid(psutil.Process(job.pid), 1)
    wait_for_batches(directory / "amulet.part1.jsonl", 1, job)
    rank1.send_signal(signal.SIGKILL)
    code, _, err = finish(job, timeout=120)  # the launcher stops rank 0 too: no hang
    assert code != 0
    assert not final.exists()
    saved = batch_lines(directory / "amulet.part1.jsonl")
    assert 1 <= saved < len(QUESTIONS) // 2 // 2, "the kill did not land mid-way"

    rerun = run_cmd(torchrun_cmd(2, args))
    assert rerun.returncode == 0, rerun.stderr
    assert final.read_bytes() == reference
    indices = [r["index"] for r in json.loads(final.read_text())]
    assert indices == list(range(len(QUESTIONS)))
    assert sorted(p.name for p in directory.iterdir()) == ["amulet.json", "amulet.meta.json"]


def test_launcher_variables_give_rank_and_world():
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert launched_process(env) == Process(3, 4, 1, 2)
    assert launched_process({}) == Process()
    assert launched_process({"WORLD_SIZE": "1", "RANK": "0"}) == Process()


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2"}, "RANK is not"),
    ({"WORLD_SIZE": "2", "RANK": "two"}, "RANK='two' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "inconsistent launcher variables"),
])
def test_broken_launcher_variables_are_a_user_error(env, message):
    with pytest.raises(UserError, match=message):
        launched_process(env)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_every_batch_has_exactly_one_owner(world):
    owners = [[r for r in range(world) if Process(r, world).owns(b)] for b in range(50)]
    assert all(len(o) == 1 for o in owners)


@pytest.mark.parametrize("local_rank, expected", [(0, ["4", "5"]), (1, ["6", "7"])])
def test_multi_gpu_ranks_get_disjoint_gpu_slices(local_rank, expected, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    process = Process(local_rank, 2, local_rank, 2)
    assert restrict_gpus(process, multi_gpu=True, device="cuda") == expected
    assert distributed.os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(expected)


def test_multi_gpu_needs_a_gpu_per_process(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(UserError, match="with 1 GPU.s. each need 2 GPUs, 1 visible"):
        restrict_gpus(Process(1, 2, 1, 2), multi_gpu=True, device="cuda")


@pytest.mark.parametrize("local_rank, expected", [(0, ["0", "1"]), (1, ["2", "3"]),
                                                  (2, ["4", "5"])])
def test_vllm_ranks_get_their_tensor_parallel_gpus(local_rank, expected, monkeypatch):
    """Under a launcher each vLLM engine gets `--vllm_tensor_parallel_size` GPUs of its own
    (vLLM places its engine on the first visible GPUs, so without this every rank would use
    the same ones); GPUs left over stay unused."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    process = Process(local_rank, 3, local_rank, 3)
    assert restrict_gpus(process, multi_gpu=True, device="cuda", per_rank=2) == expected
    assert distributed.os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(expected)


def test_vllm_ranks_need_their_tensor_parallel_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    with pytest.raises(UserError, match="2 processes per node with 2 GPU.s. each need 4 GPUs"):
        restrict_gpus(Process(0, 2, 0, 2), multi_gpu=True, device="cuda", per_rank=2)


def test_gpu_slices_only_with_multi_gpu_and_several_local_processes(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert restrict_gpus(Process(0, 2, 0, 2), multi_gpu=False, device="cuda") is None
    assert restrict_gpus(Process(1, 2, 0, 1), multi_gpu=True, device="cuda") is None
    assert restrict_gpus(Process(0, 2, 0, 2), multi_gpu=True, device="cpu") is None
    assert distributed.os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


class FakeCollectives:
    """torch.distributed as rank 0 sees it, with the other ranks' answers scripted."""

    def __init__(self, others_see: list[bool]):
        self.others_see = others_see

    def broadcast_object_list(self, objects, src):
        assert src == 0 and objects[0]

    def all_gather_object(self, out, mine):
        out[:] = [mine, *self.others_see]


@pytest.mark.parametrize("others_see, blind", [([True], None), ([False, True, False], [1, 3])])
def test_ranks_that_cannot_see_rank_0s_files_are_named(others_see, blind, tmp_path, monkeypatch):
    import torch.distributed as dist

    fake = FakeCollectives(others_see)
    monkeypatch.setattr(dist, "broadcast_object_list", fake.broadcast_object_list)
    monkeypatch.setattr(dist, "all_gather_object", fake.all_gather_object)
    prepared = []
    process = Process(0, 1 + len(others_see))
    if blind is None:
        distributed.meet(process, tmp_path / "out", lambda: prepared.append(1))
    else:
        with pytest.raises(UserError, match=re.escape(f"ranks {blind} do not see rank 0")):
            distributed.meet(process, tmp_path / "out", lambda: prepared.append(1))
    assert prepared == [1]
    assert list((tmp_path / "out").iterdir()) == []  # the marker is gone either way


def test_a_single_process_meets_nobody_and_just_prepares(tmp_path):
    prepared = []
    distributed.meet(Process(), tmp_path / "out", lambda: prepared.append(1))
    assert prepared == [1] and not (tmp_path / "out").exists()
