import sys

from featint.cli import main

sys.exit(main())
