"""Publishing into a local repository (convert.package): builds racing for one version number leave one
winner, a verified version; the loser is told "version N exists" in one line, or takes the next number
when it was given none. The race is run for real (threads renaming at once) and simulated (another
build's directory appearing between the check and the rename)."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

import pytest

import convert.package
from convert.package import LocalDestination, publish, staging_dir
from runtime.engine.artifact import verify_version_dir
from runtime.engine.errors import VersionExists
from runtime.engine.manifest import read_manifest
from runtime.engine.remote import RepositoryError
from tests.fixtures.artifacts import sequence_model
from tests.fixtures.races import one_winner, race


@pytest.fixture
def two_builds(tmp_path) -> list[Path]:
    """Two builds of version 1 whose files differ."""
    return [sequence_model(tmp_path / f"build-{i}" / "seq" / "1", scale=2.0 + i) for i in range(2)]


def staged(model_dir: Path, build: Path):
    """A staging directory beside the model's versions holding `build`, removed on leaving."""
    context = staging_dir(model_dir, 1)
    staging = context.__enter__()
    shutil.copytree(build, staging, dirs_exist_ok=True)
    return context, staging


@pytest.fixture
def renames_at_once(monkeypatch):
    """Both racers pass the existence check before either renames: the rename itself decides (a
    renumbered retry renames at once)."""
    barrier, rename, held_once = threading.Barrier(2), os.rename, set()

    def held(source, target):
        if source not in held_once:
            held_once.add(source)
            barrier.wait(timeout=30)
        rename(source, target)

    monkeypatch.setattr(convert.package.os, "rename", held)


def test_two_builds_publishing_one_version_at_once_leave_one_winner(tmp_path, two_builds, renames_at_once):
    model_dir = tmp_path / "repo" / "seq"
    staging = [staged(model_dir, b) for b in two_builds]
    outcomes = race([lambda s=s: publish(s, model_dir, 1) for _, s in staging])
    for context, _ in staging:
        context.__exit__(None, None, None)
    index, won = one_winner(outcomes, Path)
    assert won == model_dir / "1"
    assert verify_version_dir(won).files == read_manifest(two_builds[index]).files
    assert [p.name for p in model_dir.iterdir()] == ["1"]  # the loser's staging is gone


def test_two_builds_free_to_renumber_take_one_number_each(tmp_path, two_builds, renames_at_once):
    model_dir = tmp_path / "repo" / "seq"
    staging = [staged(model_dir, b) for b in two_builds]
    outcomes = race([lambda s=s: publish(s, model_dir, 1, take_next=True) for _, s in staging])
    for context, _ in staging:
        context.__exit__(None, None, None)
    assert sorted(outcomes) == [model_dir / "1", model_dir / "2"], outcomes
    for final, build in zip(outcomes, two_builds, strict=True):
        manifest = verify_version_dir(final)
        assert manifest.version == int(final.name)  # renumbered with its directory
        assert manifest.files == read_manifest(build).files


@pytest.fixture
def another_build_wins_the_rename(monkeypatch, tmp_path):
    """Another build's version appears after the existence check, right before this build's first rename."""
    rename = os.rename
    winner = sequence_model(tmp_path / "winner" / "seq" / "1", scale=5.0)
    won: list[str] = []

    def racing(source, target):
        if not won:
            won.append(target)
            shutil.copytree(winner, target)
        rename(source, target)

    monkeypatch.setattr(convert.package.os, "rename", racing)
    return winner


def test_a_rename_refused_as_not_empty_is_version_n_exists(tmp_path, two_builds, another_build_wins_the_rename):
    model_dir = tmp_path / "repo" / "seq"
    with staging_dir(model_dir, 1) as staging:
        shutil.copytree(two_builds[0], staging, dirs_exist_ok=True)
        with pytest.raises(VersionExists, match=r"version 1 exists: another build published it meanwhile"):
            publish(staging, model_dir, 1)
    assert [p.name for p in model_dir.iterdir()] == ["1"]
    assert verify_version_dir(model_dir / "1").files == read_manifest(another_build_wins_the_rename).files


def test_a_build_given_no_version_takes_the_next_after_losing_the_rename(
    tmp_path, two_builds, another_build_wins_the_rename
):
    destination = LocalDestination(tmp_path / "repo", "seq")
    with destination.staging(1) as staging:
        shutil.copytree(two_builds[0], staging, dirs_exist_ok=True)
        where, manifest = destination.publish(staging, 1, take_next=True)
    assert where == str(tmp_path / "repo" / "seq" / "2") and manifest.version == 2
    assert verify_version_dir(where).version == 2
    assert sorted(p.name for p in (tmp_path / "repo" / "seq").iterdir()) == ["1", "2"]


def test_a_rename_failing_otherwise_is_one_line_naming_the_repository(tmp_path, two_builds, monkeypatch):
    def denied(source, target):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(convert.package.os, "rename", denied)
    model_dir = tmp_path / "repo" / "seq"
    with staging_dir(model_dir, 1) as staging:
        shutil.copytree(two_builds[0], staging, dirs_exist_ok=True)
        with pytest.raises(RepositoryError, match="cannot publish version 1: Permission denied"):
            publish(staging, model_dir, 1)
