import sys

from torchrec_fusion.cli import main

sys.exit(main())
