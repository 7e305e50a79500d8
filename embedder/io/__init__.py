"""Files in and out: the readers, the Parquet/JSONL writers and the resumable batch job."""
