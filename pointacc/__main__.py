import sys

from pointacc.cli import main

sys.exit(main())
