"""effnet-lightning command line: `python cli.py fit|validate|test|predict|export --help`."""

from effnet_lightning.cli.app import main

if __name__ == "__main__":
    main()
