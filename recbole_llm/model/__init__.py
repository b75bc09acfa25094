"""recbole-llm's models; importing this package registers them."""
from recbole_llm.model.alpharec import AlphaRec
from recbole_llm.model.lightgcn_infonce import LightGCNInfoNCE

__all__ = ["AlphaRec", "LightGCNInfoNCE"]
