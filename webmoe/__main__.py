import sys

from webmoe.cli import main

sys.exit(main())
