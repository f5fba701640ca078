"""WebDataset shards of (video bytes, record): written atomically, streamed to every rank and worker.

- `vt_data.shards.layout`: what a shard directory holds (member extensions, `index.json`), shared by
  both sides.
- `vt_data.shards.writer`: `write_shards`, the atomic tars and their index.
- `vt_data.shards.reader`: `list_shards` and member-by-member reading of one shard, without torch
  (`iter_shard_records` for tools that only want the records).
- `vt_data.shards.stream`: `make_stream` / `make_loader`, the split by rank and worker, skip-and-count
  on decode failure, order and resume.
"""
