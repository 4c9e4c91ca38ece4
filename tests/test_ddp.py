"""Training beyond one CPU: --device, and data-parallel training under torchrun.

Two gloo processes (``torchrun --nproc_per_node 2``, on the CPU) must give the weights of one
process on the same global batches; a run resumes with another number of processes; the
shard losses' gradients add up to the global batch's. GPU paths run only where torch sees a
GPU, and are skipped with the reason otherwise.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_train_config
from mtopnet import cli
from mtopnet.checkpoint import read_checkpoint
from mtopnet.config import UserError
from mtopnet.devices import Processes, processes_from_env, resolve_device
from mtopnet.model import MTopNet
from mtopnet.train import (
    _DERIVED_MODEL_FIELDS,
    LabelNorm,
    TrainConfig,
    _Task,
    _usable_counts,
    build_cache,
    iterate_batches,
    train,
)

NEEDS_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no GPU (torch.cuda.is_available())")


def ddp_config(epochs: int) -> TrainConfig:
    """The tiny recipe with uneven shards: 160 spectra in batches of 53 -> 53, 53, 53, 1, so the
    two processes hold 27 and 26 rows, and the last batch leaves rank 1 empty. One thread per
    process (two processes share the two cores)."""
    config = tiny_train_config(epochs)
    return dataclasses.replace(config, num_threads=1, optim=dataclasses.replace(config.optim, batch_size=53))


def write_recipe(config: TrainConfig, path: Path) -> Path:
    """``config`` as a recipe YAML that ``mtopnet train --config`` reads back to the same config."""
    raw = config.as_dict()
    raw["model"] = {k: v for k, v in raw["model"].items() if k not in _DERIVED_MODEL_FIELDS}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert TrainConfig.from_dict(yaml.safe_load(path.read_text())).as_dict() == config.as_dict()
    return path


def torchrun_train(nproc: int, stores, out: Path, recipe: Path, *extra: str) -> None:
    """``torchrun --standalone --nproc_per_node NPROC -m mtopnet.cli train ...`` on the CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "mtopnet.cli", "train", "--train", str(stores[0]), "--val", str(stores[1]), "--out", str(out),
           "--config", str(recipe), "--quiet", *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def assert_same_training_state(a: Path, b: Path, rtol: float = 1e-5) -> None:
    """Two ``last.pt`` hold the same training state: Adam's moments (linear in the gradients)
    agree to ``10 * rtol`` of each tensor's scale, the weights to ``rtol`` of theirs, and the
    epoch's mean losses to ``rtol``.

    Weights are compared where the gradient is determined: an entry whose gradient RMS
    (sqrt of Adam's second moment) is below 1e-6 of its tensor's largest has a gradient that
    is zero up to rounding (~1e-8), and Adam turns that rounding into a full step of either
    sign; such entries may differ, but only a handful (<= 0.1% of the weights).
    """
    ca, cb = read_checkpoint(a), read_checkpoint(b)
    assert ca["train_state"]["epoch"] == cb["train_state"]["epoch"]
    assert ca["scheduler"]["last_epoch"] == cb["scheduler"]["last_epoch"]
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    assert not any(k.startswith("module.") for k in cb["state_dict"])  # the plain network, not DDP's wrapper
    undetermined_off, total = 0, 0
    for i, key in enumerate(ca["state_dict"]):  # AdamW's state is indexed in parameter order
        wa, wb = ca["state_dict"][key], cb["state_dict"][key]
        sa, sb = ca["optimizer"]["state"][i], cb["optimizer"]["state"][i]
        assert sa["exp_avg"].shape == wa.shape
        for name in ("exp_avg", "exp_avg_sq"):
            scale = float(sa[name].abs().max()) or 1.0
            assert float((sa[name] - sb[name]).abs().max()) <= 10 * rtol * scale, (key, name)
        rms = sa["exp_avg_sq"].sqrt()
        determined = rms > 1e-6 * float(rms.max())
        off = (wa - wb).abs() > rtol * (float(wa.abs().max()) or 1.0)
        assert not bool((off & determined).any()), key
        undetermined_off += int(off.sum())
        total += wa.numel()
    assert undetermined_off <= 1e-3 * total
    la = ca["train_state"]["history"][-1]["train"]
    lb = cb["train_state"]["history"][-1]["train"]
    for k in la:
        assert lb[k] == pytest.approx(la[k], rel=rtol), k


# ----------------------------------------------------------------------------- fast, in one process


def test_device_names(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="no GPU"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="must be one of"):
        resolve_device("tpu")


def test_cuda_without_a_gpu_is_one_line_and_exit_2(monkeypatch, capsys, toy_stores, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = cli.main(["train", "--train", str(toy_stores[0]), "--val", str(toy_stores[1]),
                     "--out", str(tmp_path / "run"), "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no GPU" in err
    assert not (tmp_path / "run" / "cache").exists()  # refused before any work
    code = cli.main(["predict", str(toy_stores[2]), "--out", str(tmp_path / "c.csv"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no GPU" in err


def test_processes_from_the_torchrun_environment():
    assert processes_from_env({}) == Processes(0, 1, 0)
    procs = processes_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (procs.rank, procs.world, procs.local_rank, procs.is_main, procs.distributed) == (3, 4, 1, False, True)
    with pytest.raises(UserError, match="RANK=4, WORLD_SIZE=4"):
        processes_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(UserError, match="must be integers"):
        processes_from_env({"RANK": "one", "WORLD_SIZE": "2"})


def test_shards_split_each_global_batch(toy_stores, tmp_path):
    config = ddp_config(1)
    cache = build_cache(toy_stores[0], config.preprocess, tmp_path, progress=False)
    norm = LabelNorm.fit(cache.labels)
    order = np.random.default_rng([0, 0]).permutation(len(cache))
    whole = list(iterate_batches(cache, order, 53, norm, config.redshift))
    shards = [list(iterate_batches(cache, order, 53, norm, config.redshift, shard=(r, 2))) for r in (0, 1)]
    assert [len(b["z"]) for b in whole] == [53, 53, 53, 1]
    assert [len(b["z"]) for b in shards[0]] == [27, 27, 27, 1]
    assert [len(b["z"]) for b in shards[1]] == [26, 26, 26, 0]
    for i, batch in enumerate(whole):  # the shards are the global batch's rows, nothing else
        z = np.sort(np.concatenate([shards[0][i]["z"].numpy(), shards[1][i]["z"].numpy()]))
        assert np.array_equal(z, np.sort(batch["z"].numpy()))
        assert np.array_equal(np.sort(shards[0][i]["z"].numpy()),
                              np.sort(cache.labels["z"][order[53 * i:53 * (i + 1)][0::2]].astype(np.float32)))


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test (two threads on a busy 2-core machine wait
    for each other at every operation), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("world", [2, 3])
def test_shard_losses_average_to_the_global_batch_loss(toy_stores, tmp_path, world, one_thread):
    """The mean over processes of the shard losses' gradients (what DDP applies) is the
    gradient of the global batch's loss, with uneven shards, an empty shard and missing labels."""
    config = ddp_config(1)
    cache = build_cache(toy_stores[0], config.preprocess, tmp_path, progress=False)
    cache.labels["logsfr"][::3] = np.nan  # labels missing unevenly across the shards
    cache.labels["logmstar"][5:40] = np.nan
    norm = LabelNorm.fit(cache.labels)
    net = MTopNet(config.model)
    task = _Task(config)
    rows = np.arange(2 * world + 37)[::-1].copy()  # uneven shards
    batch = next(iterate_batches(cache, rows, len(rows), norm, config.redshift))
    loss, parts = task.loss(net(batch["spectrum"], batch["continuum"]), batch)
    reference = torch.autograd.grad(loss, list(net.parameters()))
    counts = _usable_counts(config.redshift.index(cache.labels["z"][rows]), cache.labels["logmstar"][rows],
                            cache.labels["logsfr"][rows])
    assert counts["logmstar"] < len(rows) and counts["logsfr"] < len(rows)
    summed = [torch.zeros_like(p) for p in net.parameters()]
    shares = dict.fromkeys(parts, 0.0)
    total = 0.0
    for rank in range(world + 1):  # one rank more than rows to fill: an empty shard
        shard = next(iterate_batches(cache, rows, len(rows), norm, config.redshift, shard=(rank, world + 1)))
        out = net(shard["spectrum"], shard["continuum"])
        shard_loss, shard_parts = task.shard_loss(out, shard, counts, world + 1)
        for acc, g in zip(summed, torch.autograd.grad(shard_loss, list(net.parameters())), strict=True):
            acc += g / (world + 1)
        total += float(shard_loss.detach()) / (world + 1)
        for k, v in shard_parts.items():
            shares[k] += v
    assert total == pytest.approx(float(loss.detach()), rel=1e-5)
    for k, v in parts.items():
        assert shares[k] == pytest.approx(v, rel=1e-5)
    for g_ref, g in zip(reference, summed, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6 * float(g_ref.abs().max() + 1e-12))


# ----------------------------------------------------------------------------- torchrun, gloo on the CPU


def test_two_gloo_processes_equal_one_process(toy_stores, tmp_path):
    config = ddp_config(1)
    torch.manual_seed(0)
    single = train(toy_stores[0], toy_stores[1], tmp_path / "one", config, progress=False)
    torchrun_train(2, toy_stores, tmp_path / "two", write_recipe(config, tmp_path / "recipe.yaml"))
    assert_same_training_state(tmp_path / "one" / "last.pt", tmp_path / "two" / "last.pt")
    # rank 0 alone wrote the run's files, and the summary says two processes trained
    two = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert two == ["best.pt", "cache", "config.yaml", "history.jsonl", "last.pt", "model.pt", "summary.json"]
    history = [yaml.safe_load(line) for line in (tmp_path / "two" / "history.jsonl").read_text().splitlines()]
    assert [r["processes"] for r in history] == [2] and single["history"][0]["processes"] == 1
    assert history[0]["val"]["loss"] == pytest.approx(single["history"][0]["val"]["loss"], rel=1e-4)


def test_resume_with_another_number_of_processes(toy_stores, tmp_path, monkeypatch):
    """One process trains epoch 1 of 2 and is stopped; two processes resume from its last.pt;
    the result equals an uninterrupted one-process run."""
    import mtopnet.train as train_module

    config = ddp_config(2)
    train(toy_stores[0], toy_stores[1], tmp_path / "whole", config, progress=False)

    write_text = train_module._write_text

    def stop_after_the_first_epoch(path: Path, text: str) -> None:
        write_text(path, text)
        if path.name == "history.jsonl":
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_write_text", stop_after_the_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(toy_stores[0], toy_stores[1], tmp_path / "stopped", config, progress=False)
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "stopped" / "last.pt")["train_state"]["epoch"] == 1
    torchrun_train(2, toy_stores, tmp_path / "stopped", write_recipe(config, tmp_path / "recipe.yaml"), "--resume")
    assert_same_training_state(tmp_path / "whole" / "last.pt", tmp_path / "stopped" / "last.pt")
    history = [yaml.safe_load(line) for line in (tmp_path / "stopped" / "history.jsonl").read_text().splitlines()]
    assert [r["processes"] for r in history] == [1, 2]


# ----------------------------------------------------------------------------- GPU (skipped without one)


@NEEDS_GPU
def test_training_on_the_gpu(toy_stores, tmp_path):
    config = ddp_config(1)
    result = train(toy_stores[0], toy_stores[1], tmp_path / "gpu", config, progress=False, device="cuda")
    assert result["history"][0]["device"].startswith("cuda")
    ck = read_checkpoint(tmp_path / "gpu" / "last.pt")
    assert all(t.device.type == "cpu" for t in ck["state_dict"].values())
    cpu = train(toy_stores[0], toy_stores[1], tmp_path / "cpu", config, progress=False)
    # the same run on another device: losses agree to float32 (and cuDNN) rounding
    assert result["history"][0]["train"]["loss"] == pytest.approx(cpu["history"][0]["train"]["loss"], rel=1e-2)


@NEEDS_GPU
def test_predict_on_the_gpu_matches_the_cpu(tiny_model_path, toy_stores):
    from mtopnet.predict import predict_batches
    from mtopnet.store import iter_store
    from mtopnet.trained import load_model

    rows = {}
    for device in ("cpu", "cuda"):
        model = load_model(tiny_model_path, device=device)
        assert next(model.network.parameters()).device.type == device
        rows[device] = next(predict_batches(model, iter_store(toy_stores[2]), refine=False, with_pdf=True))
    np.testing.assert_allclose(rows["cuda"]["Z_PDF"], rows["cpu"]["Z_PDF"], atol=1e-4)
    np.testing.assert_allclose(rows["cuda"]["LOGMSTAR"], rows["cpu"]["LOGMSTAR"], atol=1e-3)


@NEEDS_GPU
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data parallelism needs 2 GPUs")
def test_two_nccl_processes_equal_one_process(toy_stores, tmp_path):
    config = ddp_config(1)
    train(toy_stores[0], toy_stores[1], tmp_path / "one", config, progress=False, device="cuda")
    env = {**os.environ}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mtopnet.cli",
           "train", "--train", str(toy_stores[0]), "--val", str(toy_stores[1]), "--out", str(tmp_path / "two"),
           "--config", str(write_recipe(config, tmp_path / "recipe.yaml")), "--quiet", "--device", "cuda"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_training_state(tmp_path / "one" / "last.pt", tmp_path / "two" / "last.pt", rtol=1e-3)
