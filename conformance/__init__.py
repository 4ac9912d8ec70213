"""The conformance suites every plugin passes (DESIGN §7). Not built yet: see the conformance issue."""
