"""``python -m ai_singer COMMAND ...``: the same as the ``ai-singer`` command (see :mod:`ai_singer.cli`)."""
import sys

from ai_singer.cli import main

sys.exit(main())
