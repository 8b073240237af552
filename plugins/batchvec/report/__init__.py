"""Every record accounted for (accounting, pure) and the run report assembled and published
(assemble)."""
