"""TensorRT's timing cache on disk: one file per GPU model and TensorRT version, shared by every build.

A build reads it before timing kernels (the second build of a model is much faster) and adds what it
timed when done. The file is keyed by the GPU's name as well as its compute capability: an L4 and an
RTX 4090 are both sm89, but each one's cache is rejected on the other (`ignore_mismatch=False`). Writes
hold a lock and merge with what is on disk (`ITimingCache.combine`), so concurrent builds keep each
other's entries. A file TensorRT cannot read, or rejects, is set aside with a warning and the build
goes on without it; nothing about the cache can fail a build or lose a built plan.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from filelock import FileLock

from runtime.engine.cuda_device import CudaDevice

log = logging.getLogger("trtserve.convert")


def default_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trtserve"


def cache_filename(device: CudaDevice, tensorrt_version: str) -> str:
    """timing-<gpu model>-sm<cc>-trt<version>.cache, e.g. timing-nvidia-l4-sm89-trt10.7.0.cache"""
    return f"timing-{device.slug}-sm{device.compute_capability.replace('.', '')}-trt{tensorrt_version}.cache"


class TimingCacheFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = FileLock(str(path) + ".lock", timeout=600)

    def attach(self, config) -> bool:
        """Give `config` (an IBuilderConfig) the cache on disk, or an empty one where there is none or it is
        unusable. False when TensorRT refuses even an empty cache: the build then runs without one."""
        try:
            with self._locked():
                data = self._read()
                cache = self._parse(config, data) if data else None
                if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
                    return True
                if data:
                    self._set_aside("TensorRT cannot read it" if cache is None else "TensorRT rejects it for this GPU")
        except OSError as e:  # no cache directory, or the lock not granted in time (filelock.Timeout)
            log.warning("tensorrt: cannot use the timing cache %s: %s", self.path, e)
        if config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
            return True
        log.warning("tensorrt: no timing cache for this build (TensorRT refused an empty one)")
        return False

    def save(self, config) -> None:
        """Merge what this build timed into the file (under the lock); warn, never raise, when it cannot."""
        built = config.get_timing_cache()
        if built is None:
            log.warning("tensorrt: the build has no timing cache to save; %s is unchanged", self.path)
            return
        try:
            with self._locked():
                merged = built
                data = self._read()
                if data:
                    on_disk = self._parse(config, data)
                    if on_disk is None:
                        self._set_aside("TensorRT cannot read it")
                    elif on_disk.combine(built, False):
                        merged = on_disk
                    else:
                        log.warning("tensorrt: cannot merge into %s; replacing it with this build's", self.path)
                blob = bytes(merged.serialize())
                tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
                tmp.write_bytes(blob)
                tmp.replace(self.path)
        except OSError as e:
            log.warning("tensorrt: could not save the timing cache to %s: %s", self.path, e)

    def _locked(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self._lock

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as e:
            log.warning("tensorrt: cannot read the timing cache %s: %s", self.path, e)
            return b""

    @staticmethod
    def _parse(config, data: bytes):
        try:
            return config.create_timing_cache(data)
        except Exception:  # TensorRT raises or returns None for bytes it cannot read
            return None

    def _set_aside(self, why: str) -> None:
        """Move the file out of the way (the lock is held), keeping it for whoever wants to look."""
        aside = self.path.with_name(f"{self.path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        try:
            self.path.replace(aside)
            kept = f", kept as {aside.name}"
        except OSError:
            kept = ""
        log.warning("tensorrt: timing cache %s set aside (%s)%s", self.path, why, kept)
