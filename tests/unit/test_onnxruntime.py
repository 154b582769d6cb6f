"""ONNX Runtime sessions sized for a server that shares its cores."""

import os

import pytest

from runtime import load_engine
from runtime.engine.backends import EngineOptions
from runtime.engine.backends.onnxruntime import cpu_budget
from tests.fixtures.artifacts import sequence_model


@pytest.mark.parametrize(("omp", "expected"), [(None, "all"), ("1", 1), ("999", "all"), ("0", "all"), ("x", "all")])
def test_the_cpu_budget_is_what_the_scheduler_assigned(monkeypatch, omp, expected):
    everything = len(os.sched_getaffinity(0))
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert cpu_budget() == (everything if expected == "all" else expected)


def test_a_replica_given_one_cpu_runs_one_intra_op_thread_and_no_inter_op_pool(monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets in a worker assigned one CPU
    version = sequence_model(tmp_path / "seq" / "1")
    with load_engine(version, "onnxruntime") as engine:
        options = engine._session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with load_engine(version, "onnxruntime", options=EngineOptions(intra_op_threads=3)) as engine:
        assert engine._session.get_session_options().intra_op_num_threads == 3
