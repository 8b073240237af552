"""Small helpers with no pipeline knowledge: line splitting, backoff, redaction, malloc tuning."""
