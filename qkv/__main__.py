"""``python -m qkv`` runs the CLI (also the entry point for torchrun)."""

import sys

from qkv.cli import main

sys.exit(main())
