"""What is left of the OpenSearch stand-in (the devstack runs a real node now): its copy of ML
Commons' `${parameters.X}` templating, which tests/test_security_inputs.py still imports.
Delete this package once that test fills its templates on the real node instead."""
