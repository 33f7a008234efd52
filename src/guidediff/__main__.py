import sys

from guidediff.cli import main

sys.exit(main())
