"""Monthly partitions of the append-mostly logs, created ahead and dropped whole after
RETENTION_MONTHS: never a row-by-row delete (docs/retention.md)."""
