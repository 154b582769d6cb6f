"""Model repository layout: <repository>/<name>/<version>/, versions being positive integers."""

from __future__ import annotations

from pathlib import Path

from runtime.engine.errors import ArtifactError


def list_versions(model_dir: Path) -> list[int]:
    """Complete versions of one model, ascending; staging and hidden directories are ignored."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def version_dir(repository: Path, name: str, version: int | str = "latest") -> Path:
    model_dir = Path(repository) / name
    versions = list_versions(model_dir)
    if not versions:
        raise ArtifactError(f"{model_dir}: no versions of model {name!r}")
    if version == "latest":
        return model_dir / str(versions[-1])
    if int(version) not in versions:
        raise ArtifactError(
            f"{model_dir}: no version {version} of model {name!r}; have {', '.join(map(str, versions))}"
        )
    return model_dir / str(int(version))
