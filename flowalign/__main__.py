"""``python -m flowalign`` (also ``accelerate launch -m flowalign ...``)."""

import sys

from flowalign.cli import main

sys.exit(main())
