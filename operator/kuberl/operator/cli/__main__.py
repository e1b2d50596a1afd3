"""`python -m kuberl.operator.cli`: the `kuberl` command."""

import sys

from kuberl.operator.cli.main import main

sys.exit(main())
