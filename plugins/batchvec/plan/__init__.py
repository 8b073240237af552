"""The DAG's params resolved into a validated run plan (run_plan), the names of what a run
creates (naming), the transform settings a run may choose, and dry-run previews."""
