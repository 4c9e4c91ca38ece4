"""`make model`'s recipe, read with `make -n` (nothing runs): the stages' order, the reuse of a
finished stage and the resume of a stage killed midway."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STORES = ("train", "train2", "train3", "train4", "train-survey", "val", "calib-xsim")


def _dry_run(root: Path) -> list[str]:
    out = subprocess.run(["make", "-n", "model"], cwd=root, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "mtopnet " in line or "cross_sim.py" in line or line.startswith("cp ")]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_model_reuses_a_finished_stage_and_resumes_a_killed_one(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    files = [tmp_path / "pyproject.toml", tmp_path / ".venv" / ".installed"]
    files += [tmp_path / "data" / f"{name}.h5" for name in STORES]
    files += [tmp_path / "runs" / "moons-lr-stage1" / "model.pt", tmp_path / "runs" / "moons-lr-stage2" / "last.pt"]
    for age, path in enumerate(reversed(files)):  # each file older than the next one listed
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (1e9 - age * 60, 1e9 - age * 60))
    lines = _dry_run(tmp_path)
    train = [line for line in lines if " train " in line]
    assert not any("--out runs/moons-lr-stage1" in line for line in train)  # finished: not trained again
    stage2, stage3 = train
    assert "--out runs/moons-lr-stage2" in stage2 and "--resume" in stage2  # killed midway: continued
    assert "--init runs/moons-lr-stage1/model.pt" in stage2
    assert "--out runs/moons-lr " in stage3 and "--resume" not in stage3
    assert "--init runs/moons-lr-stage2/model.pt" in stage3
    assert not any(" simulate " in line for line in lines)  # every store present and up to date
    rest = lines[lines.index(stage3) + 1:]
    assert " calibrate runs/moons-lr/model.pt data/val.h5 data/calib-xsim.h5 --scan --scan-lines none" in rest[0]
    assert rest[1] == "cp runs/moons-lr/model-calibrated.pt src/mtopnet/models/moons-lr.pt"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_model_from_nothing_simulates_before_it_trains(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for path, t in ((tmp_path / "pyproject.toml", 1e9 - 60), (tmp_path / ".venv" / ".installed", 1e9)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (t, t))
    lines = _dry_run(tmp_path)
    first_train = next(i for i, line in enumerate(lines) if " train " in line)
    for store in ("train", "val"):
        made = next(i for i, line in enumerate(lines) if f"--out data/{store}.h5" in line)
        assert made < first_train
    assert sum(" train " in line for line in lines) == 3 and not any("--resume" in line for line in lines)
    assert sum(" simulate " in line for line in lines) == 6 and lines[-1].startswith("cp ")
    calib = next(i for i, line in enumerate(lines) if "cross_sim.py --n 1000 --seed 6001" in line)
    assert calib < next(i for i, line in enumerate(lines) if " calibrate " in line)
