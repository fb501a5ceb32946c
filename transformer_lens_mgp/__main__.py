"""``python -m transformer_lens_mgp``: the ``tl-mgp`` command line."""

import sys

from .cli import main

sys.exit(main())
