import sys

from lana.cli import main

sys.exit(main())
