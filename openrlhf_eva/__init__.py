"""openrlhf-eva: eva (evolving alignment via asymmetric self-play) as a plugin for OpenRLHF.

Importing the package applies `openrlhf_eva.compat` (a flash_attn stand-in where the real
package is missing, CPU guards for OpenRLHF's unconditional CUDA calls where CUDA is
missing) so that `openrlhf.models` and its trainers import on any machine.
"""

from openrlhf_eva import compat

__version__ = "0.1.0"

compat.install()
