"""recbole-llm's models; importing this package registers them."""
from recbole_llm.model.alpharec import AlphaRec

__all__ = ["AlphaRec"]
