"""``python -m aqgan_ray``: the same as the ``aqgan-ray`` console script."""

import sys

from aqgan_ray.cli import main

sys.exit(main())
