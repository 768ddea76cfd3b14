"""`python -m effnet_lightning fit|validate|test|predict|export|scale-search`, as `python cli.py`."""

from effnet_lightning.cli.app import main

main()
