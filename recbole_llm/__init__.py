"""recbole-llm: LLM-enhanced recommenders as RecBole models, and a benchmark grid around them."""
from __future__ import annotations

__version__ = "0.1.0"

try:
    import recbole as _recbole  # noqa: F401
except ImportError as _exc:  # installed with --no-deps by design; see README "Installing"
    raise ImportError(
        "recbole-llm needs RecBole 1.2.1, installed without its outdated ray pin: "
        "pip install --no-deps recbole==1.2.1"
    ) from _exc

from recbole_llm import compat as _compat

_compat.apply_all()

from recbole_llm.registry import install_recbole_hooks as _install_recbole_hooks  # noqa: E402

_install_recbole_hooks()

from recbole_llm import hooks as _hooks  # noqa: E402

_hooks.install()  # RecBole's run_recbole / objective_function / ... reach the toolkit's stages

from recbole_llm.errors import UserError  # noqa: E402
from recbole_llm.registry import get_model_class, list_models, register_model  # noqa: E402
from recbole_llm.runner import run  # noqa: E402
from recbole_llm import model as _models  # noqa: E402,F401  (registers the models)

__all__ = ["UserError", "__version__", "get_model_class", "list_models", "register_model", "run"]
