"""mmhsa: multi-modal video understanding with Hierarchical Self-Attention (arXiv 2509.15448)."""

from .attention import hsa, hsa_matrix
from .hierarchy import DOMAINS, Hierarchy

__version__ = "0.1.0"
__all__ = ["Hierarchy", "DOMAINS", "hsa", "hsa_matrix", "__version__"]
