"""Which saved Tune searches ``train --tune-samples`` restores: Tune's state is pickled, so only a
directory this user owns, nobody else can write to, and that aqgan-ray marked when the search
began. No Ray is started: ``Tuner.can_restore`` only looks for ``tuner.pkl``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aqgan_ray.aqgan import tune
from aqgan_ray.errors import UserError

AS_ROOT = os.geteuid() == 0


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """``<results>/<experiment>/tune/aqgan-tune`` as ``search`` lays it out, with saved state."""
    path = tmp_path / "results" / "smoke" / "tune" / tune.EXPERIMENT
    path.parent.parent.mkdir(parents=True)
    os.chmod(path.parent.parent, 0o755)  # whatever the umask, the run directory starts clean
    tune._start_fresh(path)
    (path / "tuner.pkl").write_bytes(b"")
    trial = path / "trial_0"
    trial.mkdir()
    (trial / "params.pkl").write_bytes(b"")
    return path


def _refused(path: Path, fragment: str) -> None:
    with pytest.raises(UserError) as info:
        tune._check_trusted(path)
    message = str(info.value)
    assert fragment in message
    assert f"Delete {path} to start the search over" in message
    assert "\n" not in message


def test_nothing_saved_starts_a_new_search(tmp_path: Path):
    assert tune._check_trusted(tmp_path / "tune" / tune.EXPERIMENT) is False
    (tmp_path / "empty").mkdir()
    assert tune._check_trusted(tmp_path / "empty") is False


def test_a_search_this_run_started_is_restored(experiment: Path):
    assert tune._check_trusted(experiment) is True
    for folder in (experiment, experiment.parent):
        assert folder.stat().st_mode & 0o777 == 0o700
    marker = experiment / tune.MARKER
    assert marker.stat().st_mode & 0o777 == 0o600
    assert json.loads(marker.read_text())["experiment"] == tune.EXPERIMENT


def test_start_fresh_tightens_existing_directories_and_replaces_the_marker(tmp_path: Path):
    path = tmp_path / "tune" / tune.EXPERIMENT
    path.mkdir(parents=True)
    os.chmod(path, 0o777)
    (path / tune.MARKER).write_text("stale")
    tune._start_fresh(path)
    assert path.stat().st_mode & 0o777 == 0o700
    assert json.loads((path / tune.MARKER).read_text())["uid"] == os.getuid()


def test_saved_state_without_the_marker_is_refused(experiment: Path):
    (experiment / tune.MARKER).unlink()
    _refused(experiment, f"lacks the {tune.MARKER}")


@pytest.mark.parametrize(
    "identity",
    [
        "not json",
        json.dumps({"created_by": "aqgan-ray", "experiment": "other", "uid": os.getuid()}),
        json.dumps({"created_by": "aqgan-ray", "experiment": tune.EXPERIMENT, "uid": -1}),
    ],
)
def test_a_marker_of_another_search_or_user_is_refused(experiment: Path, identity: str):
    (experiment / tune.MARKER).write_text(identity)
    _refused(experiment, f"lacks the {tune.MARKER}")


def test_a_marker_that_is_a_link_is_refused(experiment: Path, tmp_path: Path):
    elsewhere = tmp_path / "copied.json"
    (experiment / tune.MARKER).rename(elsewhere)
    (experiment / tune.MARKER).symlink_to(elsewhere)
    _refused(experiment, f"lacks the {tune.MARKER}")


@pytest.mark.parametrize("up", [0, 1, 2], ids=["experiment", "tune", "run-dir"])
@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_directory_others_can_write_to_is_refused(experiment: Path, up: int, mode: int):
    folder = [experiment, experiment.parent, experiment.parent.parent][up]
    os.chmod(folder, mode)
    if mode & 0o020:  # group write is another group's only when the group is not ours
        if not AS_ROOT:
            pytest.skip("a folder of another group needs root to create")
        os.chown(folder, -1, 65534)
    _refused(experiment, f"{folder} is writable by others")


@pytest.mark.parametrize("up", [0, 1, 2], ids=["experiment", "tune", "run-dir"])
def test_group_write_of_our_own_group_is_accepted(experiment: Path, up: int):
    """umask 002 (Debian, Ubuntu) and KubeRay's fsGroup make folders group-writable by the
    user's own group: a resume must still work."""
    folder = [experiment, experiment.parent, experiment.parent.parent][up]
    os.chown(folder, -1, os.getgid())
    os.chmod(folder, 0o775)
    assert tune._check_trusted(experiment) is True


def test_the_results_directory_itself_is_not_checked(experiment: Path):
    """It is the user's choice and can be a shared mount point (a KubeRay volume with fsGroup)."""
    os.chmod(experiment.parents[2], 0o2775)
    assert tune._check_trusted(experiment) is True


def test_an_experiment_directory_that_is_a_link_is_refused(experiment: Path, tmp_path: Path):
    real = tmp_path / "planted"
    experiment.rename(real)
    experiment.symlink_to(real)
    _refused(experiment, "is a symbolic link")


@pytest.mark.skipif(not AS_ROOT, reason="files of another owner need root to create")
@pytest.mark.parametrize("where", ["experiment", "tune", "marker", "trial file"])
def test_anything_owned_by_another_user_is_refused(experiment: Path, where: str):
    target = {
        "experiment": experiment,
        "tune": experiment.parent,
        "marker": experiment / tune.MARKER,
        "trial file": experiment / "trial_0" / "params.pkl",
    }[where]
    os.chown(target, 65534, -1, follow_symlinks=False)
    _refused(experiment, "owned by" if where != "marker" else f"lacks the {tune.MARKER}")
