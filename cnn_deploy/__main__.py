import sys

from cnn_deploy.cli import main

sys.exit(main())
