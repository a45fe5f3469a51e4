import sys

from textft.cli import main

sys.exit(main())
