"""openrlhf-eva: eva (evolving alignment via asymmetric self-play) as a plugin for OpenRLHF."""

__version__ = "0.1.0"
