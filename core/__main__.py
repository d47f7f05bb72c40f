import sys

from core import runtime
from core.cli import main

runtime.configure_process()  # the allocator, MLXQ_DEVICE and BLIS's threads: every command, the server included
sys.exit(main())
