import sys

from hybreid.cli import main

sys.exit(main())
