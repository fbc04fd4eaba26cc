"""OpenRLHF reward file of the `letters` family (``--reward.remote_url``): the digit family's graded
reward and response extraction, for this family's labels."""

from openrlhf_eva.embedded.reward_func import reward_func  # noqa: F401  (same formula, same markers)
