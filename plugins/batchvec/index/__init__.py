"""The k-NN index: its lifecycle and shared bulk-load settings, loading a shard (load,
bulk_writer, bulk_format, checkpoint, duplicates), and the alias that serves it (aliases)."""
