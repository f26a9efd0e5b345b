"""Where the official checkpoints' tensor names and real shapes are: copies of the project's shared reference
lists, kept in the repository so these tests run in any checkout."""
from pathlib import Path

REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "reference"
