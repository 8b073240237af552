"""Input to staged shards: read (sources, csv_types), validated (records), written in shards
(staging, staging_groups), and compared with the index for incremental runs (changes,
incremental)."""
