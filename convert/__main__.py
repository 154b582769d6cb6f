import sys

from convert.command_line import main

sys.exit(main())
