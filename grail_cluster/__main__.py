import sys

from grail_cluster.cli.main import main

sys.exit(main())
