"""A transform job's output lines: checked (check) and converted into bulk actions (convert)."""
