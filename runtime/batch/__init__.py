"""Batch inference on Ray Data (`trtserve batch`): a model version, loaded and verified once per worker,
run over Parquet, JSONL or NumPy input into Parquet files that record which version produced each row."""
