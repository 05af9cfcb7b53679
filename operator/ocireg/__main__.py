import sys

from ocireg.cli import main

sys.exit(main())
