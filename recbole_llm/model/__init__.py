"""recbole-llm's models; importing this package registers them."""
from recbole_llm.model.alpharec import AlphaRec
from recbole_llm.model.bahe import BAHE
from recbole_llm.model.lightgcn_infonce import LightGCNInfoNCE
from recbole_llm.model.llmcf import LLMCF, LLMCFDeepFM
from recbole_llm.model.llmcf_retrieval import LLMCFRetrieval, LLMCFSASRec
from recbole_llm.model.llmesr import LLMESR
from recbole_llm.model.molar import Molar
from recbole_llm.model.pad import PAD
from recbole_llm.model.rlmrec import RLMRecCon, RLMRecGen
from recbole_llm.model.rlmrec_backbones import RLMRecLightGCN, RLMRecSGL, RLMRecSimGCL
from recbole_llm.model.simgcl import SimGCL
from recbole_llm.model.tiger import TIGER

__all__ = ["AlphaRec", "BAHE", "LightGCNInfoNCE", "LLMCF", "LLMCFDeepFM", "LLMCFRetrieval", "LLMCFSASRec", "LLMESR", "Molar", "PAD", "RLMRecCon", "RLMRecGen", "RLMRecLightGCN", "RLMRecSGL", "RLMRecSimGCL", "SimGCL", "TIGER"]
