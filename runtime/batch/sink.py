"""Parquet output files that appear complete or not at all.

Ray Data's own Parquet sink writes straight to the final name, so a job killed mid-write leaves a
truncated `.parquet` file that readers of the directory trip over. This sink writes each file under a
hidden temporary name (readers skip names starting with "."), then moves it to its final name. It is a
Ray Data file sink like the built-in one, so its checkpointing (a pending record of the file's ids
before the write, committed after it) applies unchanged."""

from __future__ import annotations

import contextlib
import posixpath
import uuid

import pyarrow.parquet as pq
from ray.data._internal.planner.plan_write_op import WRITE_UUID_KWARG_NAME
from ray.data.datasource import BlockBasedFileDatasink

TEMPORARY_SUFFIX = ".tmp"


class AtomicParquetSink(BlockBasedFileDatasink):
    def __init__(self, path: str) -> None:
        super().__init__(path, file_format="parquet")

    def write_block(self, block, block_index: int, ctx) -> None:
        filename = self.filename_provider.get_filename_for_task(ctx.kwargs[WRITE_UUID_KWARG_NAME], ctx.task_idx)
        final = posixpath.join(self.path, filename)
        temporary = posixpath.join(self.path, f".{filename}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")
        try:
            with self.open_output_stream(temporary) as sink:
                pq.write_table(block.to_arrow(), sink)
            self.filesystem.move(temporary, final)
        except BaseException:
            with contextlib.suppress(OSError):
                self.filesystem.delete_file(temporary)
            raise
