"""`python -m openrlhf_eva.train_sft`: OpenRLHF's SFT CLI, unchanged, runnable without CUDA or flash_attn.

Used for the embedded default's warm start; every upstream flag works as documented upstream.
"""

from openrlhf_eva.upstream import run_upstream_cli

if __name__ == "__main__":
    run_upstream_cli("openrlhf.cli.train_sft", prog="openrlhf_eva.train_sft")
