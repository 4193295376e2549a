import sys

from cryptboot.cli import main

sys.exit(main())
