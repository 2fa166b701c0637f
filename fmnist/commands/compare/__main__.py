"""python -m fmnist.commands.compare PATH: the same as fmnist-compare."""

import sys

from fmnist.commands.compare.report import main

sys.exit(main())
