"""Helper modules the test tiers share (not tests themselves)."""
