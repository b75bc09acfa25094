"""Where the package's YAML defaults live (shipped inside the wheel)."""
from pathlib import Path

PROPERTIES_DIR = Path(__file__).resolve().parent / "properties"
