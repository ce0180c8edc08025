"""``python -m vapt.cli``: the ``vapt`` command."""
import sys

from vapt.cli.subcommands import main

sys.exit(main())
