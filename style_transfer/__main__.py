"""``python -m style_transfer ...`` is the ``style-transfer`` command."""

import sys

from style_transfer.cli import main

sys.exit(main())
