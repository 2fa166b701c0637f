"""python -m fmnist.compare PATH: the same as fmnist-compare."""

import sys

from fmnist.compare.report import main

sys.exit(main())
