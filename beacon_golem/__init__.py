"""beacon-golem: run Project Beacon LLM benchmarks on rented GPUs over the Golem Network."""

__version__ = "0.1.0"
